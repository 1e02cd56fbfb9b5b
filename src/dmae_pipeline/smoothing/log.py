"""Per-image certification logs: Cohen et al.'s tab-separated format, resumable and shardable.

A log starts with the header ``idx label predict radius correct time nA n pA_lower n_max
estimation``: Cohen's six columns, then the estimation count, the estimation samples drawn, the
lower bound on pA, the most estimation samples allowed, and how estimation went: ``fixed``
(CERTIFY, n = n_max), ``sequential`` (sequential CERTIFY, stopped at a look of its test after n
<= n_max samples) or ``skipped`` (sequential CERTIFY stopped at selection because c_hat was not the
label: n = 0, and the image counts as not certified). Then one row per image, appended and
flushed as soon as the image is certified; sequential CERTIFY writes rows in the order images
finish, not in index order. ``time`` is the seconds since the previous row (or the start): the
image's own time for fixed CERTIFY; sequential CERTIFY's images share forward passes, and the
column adds up to the run's time. The noise of image ``idx`` comes from a generator seeded with
``image_seed(base_seed, idx)``, so a row does not depend on which other images ran before it or
beside it, in which process, or whether the run was interrupted.

A log is read back as columns: ``{column name: numpy array}``, rows in file order. One process
at a time writes a log: a lock file beside it (``.<name>.lock``) keeps a second run out.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from tqdm.auto import tqdm

from dmae_pipeline.io import atomic_write, exclusive_lock
from dmae_pipeline.smoothing.bounds import check_alpha, lower_confidence_bound
from dmae_pipeline.smoothing.core import Certificate, Smooth
from dmae_pipeline.smoothing.sequential import SequentialTest

LOG_COLUMNS = (
    "idx", "label", "predict", "radius", "correct", "time", "nA", "n", "pA_lower", "n_max",
    "estimation",
)  # fmt: skip
COHEN_COLUMNS = LOG_COLUMNS[:6]
FIXED, SEQUENTIAL, SKIPPED = "fixed", "sequential", "skipped"
"""The values of the ``estimation`` column."""
_INT_COLUMNS = ("idx", "label", "predict", "correct", "nA", "n", "n_max")
_FLOAT_COLUMNS = ("radius", "pA_lower")
_TEXT_COLUMNS = ("estimation",)

Log = dict[str, np.ndarray]
"""A certification log as columns: name -> array, one entry per row."""

logger = logging.getLogger(__name__)


class IncompleteCertificationError(ValueError):
    """The logs lack images that they should hold."""


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
    return "\t".join(_FORMAT[name](v) for name, v in zip(LOG_COLUMNS, values, strict=True)) + "\n"


_FORMAT = {
    **dict.fromkeys(_INT_COLUMNS, lambda v: str(int(v))),
    **dict.fromkeys(_FLOAT_COLUMNS, lambda v: repr(float(v))),
    **dict.fromkeys(_TEXT_COLUMNS, str),
    "time": lambda v: f"{float(v):.4f}",
}


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
    if name in _TEXT_COLUMNS:
        return np.array(cells, dtype=str)
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


def log_files(prefix: str | Path) -> list[Path]:
    """The logs (``*.tsv``) in ``prefix``'s folder whose names start with its name, sorted."""
    prefix = Path(prefix)
    return sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}*.tsv"))


def _rows(log: Log) -> list[tuple]:
    return list(zip(*(log[c].tolist() for c in LOG_COLUMNS), strict=True))


def _without_time(row: tuple) -> tuple:
    at = LOG_COLUMNS.index("time")
    return row[:at] + row[at + 1 :]


def _check_full_log(log: Log, path: str | Path) -> None:
    if tuple(log) != LOG_COLUMNS:
        raise ValueError(f"{path} has columns {list(log)}, expected {list(LOG_COLUMNS)}")


def _check_settings(
    log: Log,
    path: Path,
    n: int,
    alpha: float,
    sigma: float,
    test: SequentialTest | None,
    stop_at_selection: bool,
) -> None:
    """Refuse a log whose rows were made with other settings: the rows record how estimation
    went, n_max and n; pA_lower (the bound on nA out of n: Clopper-Pearson's at alpha, or the
    sequential test's) and radius (sigma * Phi^-1(pA_lower)) pin alpha, the test and sigma."""
    kinds = (
        {FIXED} if test is None else {SEQUENTIAL, SKIPPED} if stop_at_selection else {SEQUENTIAL}
    )
    other = sorted(set(log["estimation"].tolist()) - kinds)
    if other:
        raise ValueError(
            f"{path} holds rows of {' and '.join(other)} estimation, but this run writes "
            f"{' and '.join(sorted(kinds))} rows"
        )
    other_n = sorted(set(log["n_max"].tolist()) - {n})
    if other_n:
        raise ValueError(f"{path} holds rows certified with n={other_n}, not n={n}")
    estimated = log["estimation"] != SKIPPED
    n_a, drawn = log["nA"][estimated], log["n"][estimated]
    if test is None:
        settings, off = f"alpha than {alpha}", drawn != n
        bounds = lower_confidence_bound(n_a, drawn, alpha)
    else:
        settings = f"alpha or radii than {alpha} and {test.radii.tolist()}"
        off, bounds = ~np.isin(drawn, test.looks), test.lower(n_a, drawn)
    if off.any() or not np.allclose(log["pA_lower"][estimated], bounds, rtol=1e-9, atol=0):
        raise ValueError(f"{path} holds rows certified with another {settings}")
    certified = log["predict"] != Smooth.ABSTAIN
    radii = sigma * norm.ppf(log["pA_lower"][certified])
    if not np.allclose(log["radius"][certified], radii, rtol=1e-9, atol=0):
        raise ValueError(f"{path} holds rows certified with another sigma than {sigma}")


def _open_for_append(
    path: Path,
    n: int,
    alpha: float,
    sigma: float,
    test: SequentialTest | None,
    stop_at_selection: bool,
) -> set[int]:
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
    _check_settings(log, path, n, alpha, sigma, test, stop_at_selection)
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
    radii: Sequence[float] | None = None,
    stop_at_selection: bool = False,
    others: Iterable[str | Path] = (),
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Log:
    """CERTIFY each image ``dataset[idx]`` for ``idx`` in ``indices``, appending one row per image.

    Fixed-n CERTIFY (``Smooth.certify_detailed``) by default; given ``radii``, sequential CERTIFY
    with ``n`` as n_max, the noisy samples of several images sharing full forward batches
    (``Smooth.certify_many``). Indices already in the log are skipped, so rerunning a killed run
    with the same arguments finishes it, and the file then holds an uninterrupted run's rows (up
    to the ``time`` column; sequential rows maybe in another order). So are the images of the logs
    ``others`` (other processes' shares of the same settings, or an earlier split of the images).
    A log made with another kind of estimation, n, alpha, radii or sigma is refused; n0 and
    base_seed leave no trace in the rows, so name the file after them. While it runs, a second
    process certifying into the same log stops at once with a
    :class:`~dmae_pipeline.io.LockedError`.

    :param smooth: the smoothed classifier
    :param dataset: indexable; ``dataset[idx]`` is (image [C, H, W] in [0, 1], label)
    :param indices: the dataset indices to certify (e.g. from ``shard_indices``)
    :param n0: the number of Monte Carlo samples to use for selection
    :param n: the number of Monte Carlo samples to use for estimation (sequential: the most)
    :param alpha: the failure probability
    :param batch_size: batch size to use when evaluating the base classifier
    :param log_path: the TSV log, created if missing
    :param base_seed: image ``idx``'s noise comes from a generator seeded with
                      ``image_seed(base_seed, idx)``
    :param radii: None: fixed-n CERTIFY; else sequential CERTIFY, stopping each image once its
                  certificate at each of these radii is settled (see ``SequentialTest``)
    :param stop_at_selection: sequential only: skip estimation, and count the image as not
                              certified, when selection's c_hat is not the label
    :param others: logs whose images are skipped too (``log_path`` among them is ignored)
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
    if stop_at_selection and radii is None:
        raise ValueError("stop_at_selection applies to sequential CERTIFY only: give radii")
    image_seed(base_seed, 0)  # checks base_seed before any work
    alpha = check_alpha(alpha)
    test = None if radii is None else SequentialTest(n, alpha, smooth.sigma, radii)
    device = torch.device(device) if device is not None else _model_device(smooth.model)
    log_path = Path(log_path)
    others = [Path(p) for p in others if Path(p).resolve() != log_path.resolve()]
    with exclusive_lock(lock_path(log_path), f"the certification log {log_path}"):
        done = _open_for_append(log_path, n, alpha, smooth.sigma, test, stop_at_selection)
        done |= {idx for path in others for idx in read_log(path)["idx"].tolist()}
        pending = [i for i in indices if i not in done]
        logger.info(
            "Certifying %d images (%s CERTIFY, sigma %g), %d done before, into %s",
            *(len(pending), "fixed-n" if test is None else "sequential", smooth.sigma),
            *(len(indices) - len(pending), log_path),
        )
        certificates = _certificates(
            smooth, dataset, pending, n0, n, alpha, batch_size, radii, stop_at_selection,
            base_seed, device,
        )  # fmt: skip
        _append(log_path, certificates, n0, n, test is None, len(pending), progress)
    return read_log(log_path)


def _certificates(
    smooth: Smooth,
    dataset,
    pending: list[int],
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    radii: Sequence[float] | None,
    stop_at_selection: bool,
    base_seed: int,
    device: torch.device,
) -> Iterator[tuple[tuple[int, int], Certificate]]:
    """``((idx, label), certificate)`` of each pending image, as soon as it is done."""

    def inputs():
        for idx in pending:
            image, label = dataset[idx]
            generator = torch.Generator(device=device).manual_seed(image_seed(base_seed, idx))
            yield (idx, int(label)), image.to(device), generator

    if radii is None:
        for key, x, generator in inputs():
            yield key, smooth.certify_detailed(x, n0, n, alpha, batch_size, generator)
    else:
        items = ((key, x, g, key[1] if stop_at_selection else None) for key, x, g in inputs())
        yield from smooth.certify_many(items, n0, n, alpha, batch_size, radii)


def _append(
    log_path: Path,
    certificates: Iterable[tuple[tuple[int, int], Certificate]],
    n0: int,
    n: int,
    fixed: bool,
    total: int,
    progress: bool,
) -> None:
    """Append each ((idx, label), certificate) to the log as a row as soon as it comes."""
    bar = tqdm(total=total, unit="img", desc=log_path.name, disable=not progress)
    samples, started = 0, time.perf_counter()
    last = started
    with bar, open(log_path, "a") as log:
        for (idx, label), cert in certificates:
            now = time.perf_counter()
            estimation = FIXED if fixed else SKIPPED if cert.n == 0 else SEQUENTIAL
            row = (idx, label, cert.prediction, cert.radius, cert.prediction == label, now - last)
            log.write(_format_row((*row, cert.n_a, cert.n, cert.p_a_lower, n, estimation)))
            log.flush()
            os.fsync(log.fileno())
            last, samples = now, samples + n0 + cert.n
            bar.update()
            bar.set_postfix(samples_per_s=f"{samples / (now - started):.4g}")


def merge_logs(paths: Iterable[str | Path], out_path: str | Path | None = None) -> Log:
    """Join the logs of shards into one, sorted by ``idx``; write it atomically to ``out_path`` if
    given.

    A row repeated with the same certificate (every column but ``time`` equal, as two runs of the
    same settings write it) is kept once. Refuses logs that disagree about an image, mix fixed and
    sequential estimation, or were certified with different ``n_max``.
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
    kinds = set(merged["estimation"].tolist())
    if FIXED in kinds and len(kinds) > 1:
        raise ValueError(f"the logs {[str(p) for p in paths]} mix fixed and sequential estimation")
    if len(set(merged["n_max"].tolist())) > 1:
        raise ValueError(
            f"the logs {[str(p) for p in paths]} mix n={sorted(set(merged['n_max'].tolist()))}"
        )
    if out_path is not None:
        with atomic_write(out_path, "w") as f:
            f.write("\t".join(LOG_COLUMNS) + "\n")
            f.writelines(_format_row(row) for row in kept.values())
    return merged


def merge_shard_logs(paths: Iterable[str | Path], shards: Sequence[Collection[int]]) -> Log:
    """The rows of the shards' images, sorted by ``idx``, from the logs at ``paths`` (joined as
    ``merge_logs`` joins them; any split of the images over the logs will do).

    :param paths: certification logs of one model and settings (none is allowed)
    :param shards: the image indices of each shard (e.g. from ``shard_indices``)
    :raises IncompleteCertificationError: naming every shard whose images the logs lack
    """
    paths = list(paths)
    log = merge_logs(paths) if paths else {c: _column(c, []) for c in LOG_COLUMNS}
    done = set(log["idx"].tolist())
    lacking = [(i, len(set(shard) - done), len(shard)) for i, shard in enumerate(shards)]
    detail = [f"shard {i} lacks {m} of {size}" for i, m, size in lacking if m]
    if detail:
        raise IncompleteCertificationError(
            f"the certification of {len(shards)} shard(s) is incomplete ({', '.join(detail)})"
        )
    selected = np.isin(log["idx"], [idx for shard in shards for idx in shard])
    return {column: values[selected] for column, values in log.items()}
