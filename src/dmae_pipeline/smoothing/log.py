"""Per-image certification logs: Cohen et al.'s tab-separated format with five more columns, read
and written with the csv module, resumable after a crash, one writer at a time."""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import norm

from dmae_pipeline.io import atomic_write

LOG_COLUMNS = (
    "idx", "label", "predict", "radius", "correct", "time", "nA", "n", "pA_lower", "n_max",
    "estimation",
)  # fmt: skip
"""A log's header: Cohen et al.'s six columns (``time``: the seconds since the previous row or the
start), then the estimation count, the estimation samples drawn, the lower bound on pA, the most
estimation samples allowed (``certify.n``) and how estimation went (``FIXED``, ``SEQUENTIAL`` or
``SKIPPED``). One row per image, in the order the images finish."""
COHEN_COLUMNS = LOG_COLUMNS[:6]
UNLABELLED_LOG_COLUMNS = tuple(c for c in LOG_COLUMNS if c not in ("label", "correct"))
"""The header of a log of images without labels (``certify_dataset(..., labelled=False)``)."""
FIXED, SEQUENTIAL, SKIPPED = "fixed", "sequential", "skipped"
"""The values of ``estimation``: CERTIFY (n = n_max); sequential CERTIFY, stopped at a look of its
test after n <= n_max samples; sequential CERTIFY stopped at selection because c_hat was not the
label (n = 0; the image counts as not certified)."""
_INT_COLUMNS = ("idx", "label", "predict", "correct", "nA", "n", "n_max")
_FLOAT_COLUMNS = ("radius", "pA_lower")
_CELL = {
    **dict.fromkeys(_INT_COLUMNS, int),
    **dict.fromkeys(_FLOAT_COLUMNS, float),
    "time": lambda seconds: f"{float(seconds):.4f}",
    "estimation": str,
}
_DIALECT = {"delimiter": "\t", "lineterminator": "\n", "quoting": csv.QUOTE_NONE}

Log = dict[str, np.ndarray]
"""A certification log as columns: name -> array, one entry per row, in file order."""


class IncompleteCertificationError(ValueError):
    """The logs lack images that they should hold."""


def _cells(row: Sequence, columns: Sequence[str]) -> list:
    """A row's values as the log writes them (csv writes a float as its shortest exact repr, so a
    log read back writes back the same)."""
    return [_CELL[c](v) for c, v in zip(columns, row, strict=True)]


def _complete_text(path: Path) -> str:
    """The log's text up to its last complete line (a killed writer may leave half a row)."""
    if not path.is_file():
        raise FileNotFoundError(f"certification log {path} does not exist")
    text = path.read_text()
    if "\n" not in text:
        raise ValueError(f"{path} has no complete header line; delete it to start over")
    return text[: text.rfind("\n") + 1]


def _column(name: str, cells: Sequence[str]) -> np.ndarray:
    if name in _INT_COLUMNS:
        return np.array([int(c) for c in cells], dtype=np.int64)
    if name in _FLOAT_COLUMNS:
        return np.array([float(c) for c in cells], dtype=np.float64)
    if name == "estimation":
        return np.array(cells, dtype=str)
    try:  # time: seconds here, a timedelta string in Cohen et al.'s logs
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return np.array(cells)


def _parse(text: str, path: Path) -> Log:
    header, *rows = csv.reader(io.StringIO(text), **_DIALECT)
    missing = [c for c in COHEN_COLUMNS if c not in header]
    if missing and tuple(header) != UNLABELLED_LOG_COLUMNS:
        raise ValueError(
            f"{path} is not a certification log: header {header} lacks {missing}; expected "
            f"tab-separated columns starting {' '.join(COHEN_COLUMNS)}"
        )
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path} line {number} has {len(row)} fields, not {len(header)}")
    try:
        return {name: _column(name, [row[i] for row in rows]) for i, name in enumerate(header)}
    except ValueError as e:
        raise ValueError(f"{path} has a malformed row: {e}") from e


def read_log(path: str | Path) -> Log:
    """Read a certification log (this package's, labelled or not, or Cohen et al.'s six-column
    one) as columns, ignoring a trailing incomplete row."""
    path = Path(path)
    return _parse(_complete_text(path), path)


def check_rows(log: Log, path: str | Path, sigma: float | None) -> None:
    """Refuse a row CERTIFY cannot have written, naming the file and line (radius: if ``sigma``)."""
    abstain, skipped = log["predict"] == -1, log["estimation"] == SKIPPED
    p_a, radius = log["pA_lower"], log["radius"]
    rules = []  # (rows that break the rule, what the rule is)
    if "correct" in log:
        rules += [
            (abstain & (log["correct"] != 0), "an abstention (predict -1) is never correct"),
            (log["correct"] != (log["predict"] == log["label"]), "correct must be predict==label"),
        ]
    rules += [
        (skipped & ~abstain, "a skipped image (stop_at_selection) has predict -1"),
        (skipped & ((log["n"] != 0) | (log["nA"] != 0)), "a skipped image has n = nA = 0"),
        (abstain & (radius != 0), "an abstention has radius 0"),
        (abstain & ~skipped & (p_a >= 0.5), "an abstention has pA_lower < 0.5"),
        (~abstain & (p_a < 0.5), "a certified prediction has pA_lower >= 0.5"),
    ]
    if sigma is not None:
        expected = sigma * norm.ppf(np.clip(p_a, 0.5, 1.0))
        off = ~np.isclose(radius, expected, rtol=1e-6, atol=1e-6)  # another scipy's rounding
        rules.append((~abstain & off, f"radius must be sigma * Phi^-1(pA_lower), sigma = {sigma}"))
    broken = [(int(np.flatnonzero(rows)[0]), rule) for rows, rule in rules if rows.any()]
    if broken:
        row, rule = min(broken, key=lambda b: b[0])
        values = ", ".join(f"{c}={log[c][row]}" for c in log if c != "time")
        raise ValueError(
            f"{path} line {row + 2}: {rule}, got {values}; the log was edited or is corrupt: "
            "delete it (or that line) and certify again"
        )


def _check_columns(log: Log, path: str | Path, columns: Sequence[str] = LOG_COLUMNS) -> None:
    if tuple(log) != tuple(columns):
        raise ValueError(f"{path} has columns {list(log)}, expected {list(columns)}")


def open_log(path: Path, columns: Sequence[str] = LOG_COLUMNS) -> set[int]:
    """Create the log at ``path`` with its header (``columns``), or drop the half-written last row
    of an existing one; return the indices of the images it holds."""
    if not path.exists() or path.stat().st_size == 0:
        with atomic_write(path, "w") as f:
            csv.writer(f, **_DIALECT).writerow(columns)
        return set()
    text = _complete_text(path)
    log = _parse(text, path)
    _check_columns(log, path, columns)
    complete = len(text.encode())
    if complete < path.stat().st_size:
        with open(path, "r+") as f:
            f.truncate(complete)
    return set(log["idx"].tolist())


def append_rows(path: Path, rows: Iterable[Sequence], columns: Sequence[str] = LOG_COLUMNS) -> None:
    """Append each row (values in ``columns`` order) to the log as soon as it comes, on disk
    before the next is asked for."""
    with open(path, "a", newline="") as f:
        writer = csv.writer(f, **_DIALECT)
        for row in rows:
            writer.writerow(_cells(row, columns))
            f.flush()
            os.fsync(f.fileno())


def lock_path(log_path: str | Path) -> Path:
    """The lock file that keeps a second writer away from ``log_path``."""
    log_path = Path(log_path)
    return log_path.with_name(f".{log_path.name}.lock")


def log_files(prefix: str | Path) -> list[Path]:
    """The logs (``*.tsv``) in ``prefix``'s folder whose names start with its name, sorted."""
    prefix = Path(prefix)
    return sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}*.tsv"))


def merge_logs(
    paths: Iterable[str | Path],
    out_path: str | Path | None = None,
    columns: Sequence[str] = LOG_COLUMNS,
    sigma: float | None = None,
) -> Log:
    """Join the logs of shards into one, sorted by ``idx`` (written atomically to ``out_path`` if
    given), after ``check_rows(log, path, sigma)`` on each; ``columns``: the logs' header.

    A row repeated with the same certificate (all columns but ``time``) is kept once. Refuses logs
    that disagree about an image, mix fixed and sequential estimation or differ in ``n_max``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("paths must name at least one certification log")
    rows = []
    for path in paths:
        log = read_log(path)
        _check_columns(log, path, columns)
        check_rows(log, path, sigma)
        rows += zip(*(log[c].tolist() for c in columns), strict=True)
    at = columns.index("time")
    kept: dict[int, tuple] = {}
    for row in sorted(rows, key=lambda row: row[0]):
        first = kept.setdefault(row[0], row)
        if (a := first[:at] + first[at + 1 :]) != (b := row[:at] + row[at + 1 :]):
            raise ValueError(
                f"the logs {[str(p) for p in paths]} disagree about image idx {row[0]}: {a} and "
                f"{b} (all columns but time)"
            )
    merged = {c: np.array([row[i] for row in kept.values()]) for i, c in enumerate(columns)}
    kinds = set(merged["estimation"].tolist())
    if FIXED in kinds and len(kinds) > 1:
        raise ValueError(f"the logs {[str(p) for p in paths]} mix fixed and sequential estimation")
    if len(set(merged["n_max"].tolist())) > 1:
        raise ValueError(
            f"the logs {[str(p) for p in paths]} mix n={sorted(set(merged['n_max'].tolist()))}"
        )
    if out_path is not None:
        with atomic_write(out_path, "w") as f:
            writer = csv.writer(f, **_DIALECT)
            writer.writerow(columns)
            writer.writerows(_cells(row, columns) for row in kept.values())
    return merged


def merge_shard_logs(
    paths: Iterable[str | Path],
    shards: Sequence[Collection[int]],
    columns: Sequence[str] = LOG_COLUMNS,
    sigma: float | None = None,
) -> Log:
    """The rows of the ``shards``' images (index collections, e.g. from ``shard_indices``), sorted
    by ``idx``, from the logs at ``paths`` (any number, any split of the images over them), joined
    as ``merge_logs`` joins them; an :class:`IncompleteCertificationError` names every shard whose
    images they lack."""
    paths = list(paths)
    log = (
        merge_logs(paths, columns=columns, sigma=sigma)
        if paths
        else {c: _column(c, []) for c in columns}
    )
    done = set(log["idx"].tolist())
    lacking = [(i, len(set(shard) - done), len(shard)) for i, shard in enumerate(shards)]
    detail = [f"shard {i} lacks {m} of {size}" for i, m, size in lacking if m]
    if detail:
        raise IncompleteCertificationError(
            f"the certification of {len(shards)} shard(s) is incomplete ({', '.join(detail)})"
        )
    selected = np.isin(log["idx"], [idx for shard in shards for idx in shard])
    return {column: values[selected] for column, values in log.items()}
