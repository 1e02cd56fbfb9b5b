"""Certifying a dataset into a log: the settings of a run and their fingerprint, each image's noise
seed, the shards, and the loop that appends each image's certificate as soon as it is done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dmae_pipeline.io import exclusive_lock, state_digest
from dmae_pipeline.smoothing.bounds import check_alpha, check_positive_int
from dmae_pipeline.smoothing.core import NOISE_LAYOUT, Certificate, Smooth
from dmae_pipeline.smoothing.log import (
    FIXED,
    LOG_COLUMNS,
    SEQUENTIAL,
    SKIPPED,
    UNLABELLED_LOG_COLUMNS,
    Log,
    append_rows,
    lock_path,
    open_log,
    read_log,
)
from dmae_pipeline.smoothing.many import SequentialItem, certify_many
from dmae_pipeline.smoothing.sequential import SEQUENTIAL_TEST, check_radii

logger = logging.getLogger(__name__)

SEEDS = 2**64
"""Seeds are integers in [0, SEEDS): torch's generator seeds."""


@dataclass(frozen=True)
class CertifySettings:
    """How a run certifies each image: Cohen et al.'s CERTIFY with ``n0`` selection and ``n``
    estimation samples at failure probability ``alpha``, or, given ``radii``, sequential CERTIFY
    with at most ``n`` estimation samples, stopping once the certificate at each radius is settled
    (``stop_at_selection``: and, where selection's c_hat is not the label, at selection, the image
    counting as not certified). Image ``idx``'s noise comes from a generator seeded with
    ``image_seed(seed, idx)``. ``batch_size`` noisy samples go through the model at once (in
    sequential CERTIFY, of several images)."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    radii: tuple[float, ...] | None = None
    stop_at_selection: bool = False
    seed: int = 0

    def __post_init__(self):
        plain = {  # checked, as plain Python values
            "n0": check_positive_int("n0", self.n0),
            "n": check_positive_int("n", self.n),
            "alpha": check_alpha(self.alpha),
            "batch_size": check_positive_int("batch_size", self.batch_size),
            "radii": None if self.radii is None else tuple(check_radii(self.radii).tolist()),
            "stop_at_selection": bool(self.stop_at_selection),
            "seed": check_seed(self.seed),
        }
        if self.stop_at_selection and self.radii is None:
            raise ValueError("stop_at_selection applies to sequential CERTIFY only: give radii")
        for name, value in plain.items():
            object.__setattr__(self, name, value)

    @property
    def batch_lengths(self) -> list[int]:
        """The lengths of all forward batches but the last of a segment: full batches, and in
        fixed-n CERTIFY selection's (the lengths to compile, see ``CompiledClassifier``)."""
        if self.radii is None:
            return sorted({self.batch_size, min(self.n0, self.batch_size)})
        return [self.batch_size]


def fingerprint(settings: CertifySettings, smooth: Smooth, model: Any, data: Any) -> str:
    """The short hash that names a certification log, so that a run resumes only a log whose rows
    it would write itself: of everything the rows depend on. That is the settings but
    ``batch_size`` (which only schedules forward passes), the noise layout and the sequential test,
    sigma, autocast and the device type of ``smooth``, and whatever identifies the base classifier
    (``model``, e.g. its config and weights) and the images (``data``, e.g. the test split and the
    transform): JSON values, tensors among them hashed by value."""
    described = {
        **{k: v for k, v in dataclasses.asdict(settings).items() if k != "batch_size"},
        "noise": NOISE_LAYOUT,
        "test": None if settings.radii is None else SEQUENTIAL_TEST,
        "sigma": smooth.sigma,
        "autocast": str(smooth.autocast_dtype),
        "device": _device(smooth.model).type,
        "model": model,
        "data": data,
    }
    text = json.dumps(described, sort_keys=True, default=_tensor_digest)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _tensor_digest(value: Any) -> str:
    if not torch.is_tensor(value):
        raise TypeError(f"a fingerprint describes JSON values and tensors, not {type(value)}")
    return state_digest({"tensor": value})


def check_seed(seed: int) -> int:
    """``seed`` as an int, or a ValueError if it is not an integer in [0, 2^64)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < SEEDS:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    return int(seed)


def image_seed(seed: int, idx: int) -> int:
    """The noise seed of image ``idx``: a 64-bit hash of (seed, idx) via numpy's SeedSequence, so
    that neighbouring images and neighbouring seeds get unrelated streams."""
    seed = check_seed(seed)
    if idx < 0:
        raise ValueError(f"idx must be non-negative, got {idx}")
    return int(np.random.SeedSequence([seed, int(idx)]).generate_state(1, np.uint64)[0])


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
        check_positive_int(name, value)
    if max_images is not None:
        check_positive_int("max_images", max_images)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    selected = range(0, num_images, skip)[:max_images]
    return list(selected[shard_index::num_shards])


def certify_items(
    smooth: Smooth, items: Iterable[SequentialItem | tuple], settings: CertifySettings
) -> Iterator[tuple[Hashable, Certificate]]:
    """``(key, certificate)`` of each ``(key, x, generator)`` or ``(key, x, generator, label)``
    item as ``settings`` say, as soon as it is done: fixed-n CERTIFY
    (``Smooth.certify_detailed``), one item at a time, in order; or sequential CERTIFY of several
    at once (``certify_many``: each certificate that of the item alone), in the order they finish,
    stopping at selection where c_hat is not an item's label (None: never). Items are taken as
    needed."""
    s = settings
    if s.radii is None:
        for key, x, generator, *_ in items:
            yield key, smooth.certify_detailed(x, s.n0, s.n, s.alpha, s.batch_size, generator)
    else:
        yield from certify_many(smooth, items, s.n0, s.n, s.alpha, s.batch_size, s.radii)


def certify_dataset(
    smooth: Smooth,
    dataset,
    indices: Iterable[int],
    settings: CertifySettings,
    log_path: str | Path,
    *,
    others: Iterable[str | Path] = (),
    progress: bool = True,
    labelled: bool = True,
) -> Log:
    """Certify each image ``dataset[idx]`` for ``idx`` in ``indices`` as ``settings`` say, appending
    its row to the log as soon as it is done: fixed-n CERTIFY (``Smooth.certify_detailed``) one
    image at a time, or sequential CERTIFY of several images at once (``certify_many``).

    Images already in the log are skipped, so that rerunning a killed run finishes it, and the log
    then holds the uninterrupted run's rows (up to ``time``; sequential rows maybe in another
    order); so are the images of the logs ``others`` (other processes' or shards' logs of the same
    settings). Name the log after ``fingerprint(settings, smooth, ...)``, so that it is never
    resumed under other settings. While it runs, a second process certifying into the same log
    stops at once with a :class:`~dmae_pipeline.io.LockedError`.

    :param smooth: the smoothed classifier; the images go to its model's device
    :param dataset: indexable; ``dataset[idx]`` is (image [C, H, W] in [0, 1], label)
    :param indices: the dataset indices to certify (e.g. from ``shard_indices``)
    :param log_path: the log, created if missing
    :param others: logs whose images are skipped too (``log_path`` among them is ignored)
    :param progress: show a progress bar with images/s and noisy samples/s
    :param labelled: False for images without labels (the items' labels are ignored): the log
                     has no ``label`` and ``correct`` columns (``UNLABELLED_LOG_COLUMNS``)
    :return: the whole log, as ``read_log`` gives it
    """
    if settings.stop_at_selection and not labelled:
        raise ValueError("stop_at_selection needs labelled images")
    columns = LOG_COLUMNS if labelled else UNLABELLED_LOG_COLUMNS
    indices = [int(i) for i in indices]
    if len(set(indices)) != len(indices):
        raise ValueError("indices must not repeat an image")
    out_of_range = [i for i in indices if not 0 <= i < len(dataset)]
    if out_of_range:
        raise ValueError(f"indices {out_of_range[:5]} are outside the dataset of {len(dataset)}")
    log_path = Path(log_path)
    others = [Path(p) for p in others if Path(p).resolve() != log_path.resolve()]
    with exclusive_lock(lock_path(log_path), f"the certification log {log_path}"):
        done = open_log(log_path, columns)
        done |= {idx for path in others for idx in read_log(path)["idx"].tolist()}
        pending = [i for i in indices if i not in done]
        logger.info(
            "Certifying %d images (%s CERTIFY), %d done before, into %s",
            *(len(pending), "fixed-n" if settings.radii is None else "sequential"),
            *(len(indices) - len(pending), log_path),
        )
        bar = tqdm(total=len(pending), unit="img", desc=log_path.name, disable=not progress)
        with bar:
            certified = _certificates(smooth, dataset, pending, settings, labelled)
            append_rows(log_path, _rows(certified, settings, bar, columns), columns)
    return read_log(log_path)


def _device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _certificates(
    smooth: Smooth, dataset, pending: Sequence[int], settings: CertifySettings, labelled: bool
) -> Iterator[tuple[tuple[int, int | None], Certificate]]:
    """``((idx, label), certificate)`` of each pending image, as soon as it is done (label None
    for unlabelled images)."""
    device = _device(smooth.model)

    def items():
        for idx in pending:
            image, label = dataset[idx]
            label = int(label) if labelled else None
            generator = torch.Generator(device=device).manual_seed(image_seed(settings.seed, idx))
            stop_unless = label if settings.stop_at_selection else None
            yield (idx, label), image.to(device), generator, stop_unless

    return certify_items(smooth, items(), settings)


def _rows(
    certified: Iterable[tuple[tuple[int, int | None], Certificate]],
    settings: CertifySettings,
    bar: tqdm,
    columns: Sequence[str],
) -> Iterator[tuple]:
    """Each ((idx, label), certificate) as a log row of ``columns`` as soon as it comes, counted on
    the progress bar; ``time`` is the seconds since the previous row (or the start)."""
    samples, started = 0, time.perf_counter()
    last = started
    for (idx, label), cert in certified:
        now = time.perf_counter()
        estimation = FIXED if settings.radii is None else SKIPPED if cert.n == 0 else SEQUENTIAL
        row = {
            "idx": idx, "label": label, "predict": cert.prediction, "radius": cert.radius,
            "correct": cert.prediction == label, "time": now - last, "nA": cert.n_a, "n": cert.n,
            "pA_lower": cert.p_a_lower, "n_max": settings.n, "estimation": estimation,
        }  # fmt: skip
        yield tuple(row[c] for c in columns)
        last, samples = now, samples + settings.n0 + cert.n
        bar.update()
        bar.set_postfix(samples_per_s=f"{samples / (now - started):.4g}")
