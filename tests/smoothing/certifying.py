"""The toy certification runs that the log and run tests share (their fixtures: conftest.py)."""

import dataclasses

from dmae_pipeline.smoothing import CertifySettings, certify_dataset

N0, N, ALPHA, BATCH, SEED, SIGMA = 16, 64, 0.05, 24, 11, 0.25
FIXED = CertifySettings(n0=N0, n=N, alpha=ALPHA, batch_size=BATCH, seed=SEED)
RADII = (0.0, 0.1, 0.2)
SEQUENTIAL = dataclasses.replace(FIXED, n=2000, radii=RADII)


def run(smooth, dataset, indices, path, settings=FIXED, **kwargs):
    return certify_dataset(smooth, dataset, indices, settings, path, progress=False, **kwargs)


def run_sequential(smooth, dataset, indices, path, stop_at_selection=False, **kwargs):
    settings = dataclasses.replace(SEQUENTIAL, stop_at_selection=stop_at_selection)
    return run(smooth, dataset, indices, path, settings, **kwargs)


def without_time(path) -> list[list[str]]:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [row[:5] + row[6:] for row in rows]
