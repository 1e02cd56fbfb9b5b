"""Per-image certification logs: Cohen et al.'s tab-separated format, resumable and shardable.

A log starts with the header ``idx label predict radius correct time nA n pA_lower`` (Cohen's six
columns, then the estimation count, the number of estimation samples and the lower bound on pA),
then one row per image, appended and flushed as soon as the image is certified. ``time`` is in
seconds. The noise of image ``idx`` comes from a generator seeded with
``image_seed(base_seed, idx)``, so a row does not depend on which other images ran before it, in
which process, or whether the run was interrupted.

A log is read back as columns: ``{column name: numpy array}``, rows in file order. One process
at a time writes a log: a lock file beside it (``.<name>.lock``) keeps a second run out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from tqdm.auto import tqdm

from dmae_pipeline.io import atomic_write, exclusive_lock
from dmae_pipeline.smoothing.bounds import check_alpha, lower_confidence_bound
from dmae_pipeline.smoothing.core import Certificate, Smooth

LOG_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "nA", "n", "pA_lower")
COHEN_COLUMNS = LOG_COLUMNS[:6]
_INT_COLUMNS = ("idx", "label", "predict", "correct", "nA", "n")
_FLOAT_COLUMNS = ("radius", "pA_lower")

Log = dict[str, np.ndarray]
"""A certification log as columns: name -> array, one entry per row."""


def image_seed(base_seed: int, idx: int) -> int:
    """The noise seed of image ``idx``: a 64-bit hash of (base_seed, idx) via numpy's SeedSequence,
    so neighbouring images and neighbouring base seeds get unrelated streams."""
    if base_seed < 0 or idx < 0:
        raise ValueError(f"base_seed and idx must be non-negative, got {base_seed} and {idx}")
    return int(np.random.SeedSequence([int(base_seed), int(idx)]).generate_state(1, np.uint64)[0])


def shard_indices(
    num_images: int,
    skip: int = 1,
    max_images: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
) -> list[int]:
    """The dataset indices one shard certifies.

    The images are every ``skip``-th index (0, skip, 2 skip, ...), at most ``max_images`` of them
    (None: all); shard ``shard_index`` of ``num_shards`` takes every ``num_shards``-th of those, so
    the shards are disjoint, cover the selection and stay within one image of each other in size.
    """
    for name, value in (("num_images", num_images), ("skip", skip), ("num_shards", num_shards)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    selected = range(0, num_images, skip)[:max_images]
    return list(selected[shard_index::num_shards])


def _format_row(values: Sequence) -> str:
    """One log line; floats as their shortest exact repr so a log read back writes back the same."""
    idx, label, predict, radius, correct, seconds, n_a, n, p_a_lower = values
    fields = (
        *(str(int(v)) for v in (idx, label, predict)),
        repr(float(radius)),
        str(int(correct)),
        f"{float(seconds):.4f}",
        str(int(n_a)),
        str(int(n)),
        repr(float(p_a_lower)),
    )
    return "\t".join(fields) + "\n"


def _complete_text(path: Path) -> str:
    """The log's text up to its last complete line (a killed writer may leave half a row)."""
    if not path.is_file():
        raise FileNotFoundError(f"certification log {path} does not exist")
    text = path.read_text()
    return text[: text.rfind("\n") + 1]


def _column(name: str, cells: list[str]) -> np.ndarray:
    if name in _INT_COLUMNS:
        return np.array([int(c) for c in cells], dtype=np.int64)
    if name in _FLOAT_COLUMNS:
        return np.array([float(c) for c in cells], dtype=np.float64)
    try:  # time: seconds here, a timedelta string in Cohen et al.'s logs
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells)


def _parse(text: str, path: Path) -> Log:
    lines = text.splitlines()
    header = lines[0].split("\t")
    missing = [c for c in COHEN_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path} is not a certification log: header {header} lacks {missing}; expected "
            f"tab-separated columns starting {' '.join(COHEN_COLUMNS)}"
        )
    rows = [line.split("\t") for line in lines[1:]]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path} line {number} has {len(row)} fields, not {len(header)}")
    try:
        return {name: _column(name, [row[i] for row in rows]) for i, name in enumerate(header)}
    except ValueError as e:
        raise ValueError(f"{path} has a malformed row: {e}") from e


def read_log(path: str | Path) -> Log:
    """Read a certification log (this package's, or Cohen et al.'s six-column one) as columns,
    ignoring a trailing incomplete row."""
    path = Path(path)
    text = _complete_text(path)
    if not text:
        raise ValueError(f"{path} is empty: expected a header line of certification log columns")
    return _parse(text, path)


def _rows(log: Log) -> list[tuple]:
    return list(zip(*(log[c].tolist() for c in LOG_COLUMNS), strict=True))


def _without_time(row: tuple) -> tuple:
    at = LOG_COLUMNS.index("time")
    return row[:at] + row[at + 1 :]


def _check_full_log(log: Log, path: str | Path) -> None:
    if tuple(log) != LOG_COLUMNS:
        raise ValueError(f"{path} has columns {list(log)}, expected {list(LOG_COLUMNS)}")


def _check_settings(log: Log, path: Path, n: int, alpha: float, sigma: float) -> None:
    """Refuse a log whose rows were made with another n, alpha or sigma: the rows record n, and
    pA_lower (the bound on nA out of n) and radius (sigma * Phi^-1(pA_lower)) pin the other two."""
    other_n = sorted(set(log["n"].tolist()) - {n})
    if other_n:
        raise ValueError(f"{path} holds rows certified with n={other_n}, not n={n}")
    bounds = lower_confidence_bound(log["nA"], log["n"], alpha)
    if not np.allclose(log["pA_lower"], bounds, rtol=1e-9, atol=0):
        raise ValueError(f"{path} holds rows certified with another alpha than {alpha}")
    certified = log["predict"] != Smooth.ABSTAIN
    radii = sigma * norm.ppf(log["pA_lower"][certified])
    if not np.allclose(log["radius"][certified], radii, rtol=1e-9, atol=0):
        raise ValueError(f"{path} holds rows certified with another sigma than {sigma}")


def _open_for_append(path: Path, n: int, alpha: float, sigma: float) -> set[int]:
    """Create the log with its header, or drop a half-written last row of an existing one.

    Returns the indices it already holds; refuses a log made with other settings.
    """
    if not path.exists() or path.stat().st_size == 0:
        with atomic_write(path, "w") as f:
            f.write("\t".join(LOG_COLUMNS) + "\n")
        return set()
    text = _complete_text(path)
    if not text:
        raise ValueError(f"{path} has no complete header line; delete it to start over")
    log = _parse(text, path)
    _check_full_log(log, path)
    _check_settings(log, path, n, alpha, sigma)
    if len(text) < path.stat().st_size:
        with open(path, "r+") as f:
            f.truncate(len(text.encode()))
    return set(log["idx"].tolist())


def lock_path(log_path: str | Path) -> Path:
    """The lock file that keeps a second writer away from ``log_path``."""
    log_path = Path(log_path)
    return log_path.with_name(f".{log_path.name}.lock")


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def certify_dataset(
    smooth: Smooth,
    dataset,
    indices: Iterable[int],
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    log_path: str | Path,
    base_seed: int,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Log:
    """CERTIFY each image ``dataset[idx]`` for ``idx`` in ``indices``, appending one row per image.

    Indices already in the log are skipped, so rerunning a killed run with the same arguments
    finishes it, and the file then equals an uninterrupted run's (up to the ``time`` column). A log
    made with another n, alpha or sigma is refused; n0 and base_seed leave no trace in the rows, so
    name the file after them. While it runs, a second process certifying into the same log stops
    at once with a :class:`~dmae_pipeline.io.LockedError`.

    :param smooth: the smoothed classifier
    :param dataset: indexable; ``dataset[idx]`` is (image [C, H, W] in [0, 1], label)
    :param indices: the dataset indices to certify (e.g. from ``shard_indices``)
    :param n0: the number of Monte Carlo samples to use for selection
    :param n: the number of Monte Carlo samples to use for estimation
    :param alpha: the failure probability
    :param batch_size: batch size to use when evaluating the base classifier
    :param log_path: the TSV log, created if missing
    :param base_seed: image ``idx``'s noise comes from a generator seeded with
                      ``image_seed(base_seed, idx)``
    :param device: where the images go; None: the model's device
    :param progress: show a progress bar with images/s and noisy samples/s
    :return: the whole log, as ``read_log`` gives it
    """
    indices = [int(i) for i in indices]
    if len(set(indices)) != len(indices):
        raise ValueError("indices must not repeat an image")
    out_of_range = [i for i in indices if not 0 <= i < len(dataset)]
    if out_of_range:
        raise ValueError(f"indices {out_of_range[:5]} are outside the dataset of {len(dataset)}")
    image_seed(base_seed, 0)  # checks base_seed before any work
    device = torch.device(device) if device is not None else _model_device(smooth.model)
    log_path = Path(log_path)
    with exclusive_lock(lock_path(log_path), f"the certification log {log_path}"):
        _certify_into(smooth, dataset, indices, n0, n, alpha, batch_size, log_path, base_seed,
                      device, progress)  # fmt: skip
    return read_log(log_path)


def _certify_into(
    smooth: Smooth,
    dataset,
    indices: list[int],
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    log_path: Path,
    base_seed: int,
    device: torch.device,
    progress: bool,
) -> None:
    done = _open_for_append(log_path, n, check_alpha(alpha), smooth.sigma)
    pending = [i for i in indices if i not in done]
    bar = tqdm(total=len(pending), unit="img", desc=log_path.name, disable=not progress)
    started = time.perf_counter()
    with bar, open(log_path, "a") as log:
        for count, idx in enumerate(pending, start=1):
            image, label = dataset[idx]
            label = int(label)
            generator = torch.Generator(device=device).manual_seed(image_seed(base_seed, idx))
            before = time.perf_counter()
            cert: Certificate = smooth.certify_detailed(
                image.to(device), n0, n, alpha, batch_size, generator
            )
            seconds = time.perf_counter() - before
            correct = cert.prediction == label
            row = (idx, label, cert.prediction, cert.radius, correct, seconds)
            log.write(_format_row((*row, cert.n_a, n, cert.p_a_lower)))
            log.flush()
            os.fsync(log.fileno())
            bar.update()
            elapsed = time.perf_counter() - started
            bar.set_postfix(samples_per_s=f"{count * (n0 + n) / elapsed:.4g}")


def merge_logs(paths: Iterable[str | Path], out_path: str | Path | None = None) -> Log:
    """Join the logs of shards into one, sorted by ``idx``; write it atomically to ``out_path`` if
    given.

    A row repeated with the same certificate (every column but ``time`` equal, as two runs of the
    same settings write it) is kept once. Refuses shards that disagree about an image or were
    certified with different ``n``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("paths must name at least one certification log")
    rows = []
    for path in paths:
        log = read_log(path)
        _check_full_log(log, path)
        rows += _rows(log)
    kept: dict[int, tuple] = {}
    for row in sorted(rows, key=lambda row: row[0]):
        first = kept.setdefault(row[0], row)
        if _without_time(first) != _without_time(row):
            raise ValueError(
                f"the logs {[str(p) for p in paths]} disagree about image idx {row[0]}: "
                f"{_without_time(first)} and {_without_time(row)} (all columns but time)"
            )
    merged = {c: np.array([row[i] for row in kept.values()]) for i, c in enumerate(LOG_COLUMNS)}
    if len(set(merged["n"].tolist())) > 1:
        raise ValueError(
            f"the logs {[str(p) for p in paths]} mix n={sorted(set(merged['n'].tolist()))}"
        )
    if out_path is not None:
        with atomic_write(out_path, "w") as f:
            f.write("\t".join(LOG_COLUMNS) + "\n")
            f.writelines(_format_row(row) for row in kept.values())
    return merged
