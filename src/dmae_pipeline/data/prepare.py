"""Data preparation: a source -> the dataset spec and the train/val/test splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from dmae_pipeline.data import cifar10
from dmae_pipeline.data.digits import DIGITS_SIZE, read_digits
from dmae_pipeline.data.imagefolder import read_imagefolder
from dmae_pipeline.data.splits import (
    Source,
    split_digest,
    split_indices,
    split_length,
    split_sizes,
    subset,
)

SourceName = Literal["digits", "cifar10", "imagefolder"]
"""The sources ``prepare`` reads."""


def expected_spec(source: str, val_fraction: float, test_fraction: float | None) -> dict | None:
    """The ``num_classes`` and ``split_sizes`` that ``prepare`` will write, known before reading
    anything for the digits and CIFAR-10; None for image folders (known once indexed)."""
    own = {
        "digits": {"train": DIGITS_SIZE},
        "cifar10": {"train": cifar10.TRAIN_SIZE, "test": cifar10.TEST_SIZE},
    }.get(source)
    if own is None:
        return None
    sizes = split_sizes(own["train"], _held_out(own, val_fraction, test_fraction))
    # both sources have ten classes
    return {"num_classes": 10, "split_sizes": {"test": own.get("test"), **sizes}}


def _held_out(own: dict, val_fraction: float, test_fraction: float | None) -> dict[str, float]:
    """The fractions of the train split to hold out: val, and test where the source has no test
    split of its own (``own``: its splits, or their sizes)."""
    return {"val": val_fraction, **({} if "test" in own else {"test": test_fraction})}


def read_source(
    source: SourceName, image_size: int, raw_dir: str | Path, download: bool, url: str, md5: str
) -> Source:
    if source == "digits":
        return read_digits(image_size)
    if source == "cifar10":
        return cifar10.read_cifar10(raw_dir, download=download, url=url, md5=md5)
    return read_imagefolder(raw_dir)


def prepare(
    source: SourceName,
    image_size: int,
    *,
    name: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    seed: int = 0,
    raw_dir: str | Path = "data/01_raw",
    download: bool = False,
    url: str = cifar10.URL,
    md5: str = cifar10.MD5,
) -> tuple[dict[str, Any], dict[str, dict]]:
    """Read ``source`` (digits, cifar10 or imagefolder), hold out seeded validation (and, for
    sources without a test split of their own, ``test_fraction`` test) images from its train
    split, and describe the result. Returns ``(dataset_spec, {"train", "val", "test"})``.

    ``raw_dir``, ``download``, ``url`` and ``md5`` say where CIFAR-10 or the image folder is;
    ``name`` (default: the source) labels the dataset in the spec.
    """
    data = read_source(source, image_size, raw_dir, download, url, md5)
    own = data.splits
    if "test" not in own and test_fraction is None:
        raise ValueError(f"test_fraction is needed: {source} has no test split of its own")
    held_out = _held_out(own, val_fraction, test_fraction)
    parts = split_indices(split_length(own["train"]), held_out, seed)
    splits = {part: subset(own["train"], indices) for part, indices in parts.items()}
    if "test" in own:
        splits["test"] = own["test"]
    if data.mean is None:
        mean, std = channel_stats(splits["train"]["images"])
    else:
        mean, std = list(data.mean), list(data.std)
    spec = {
        "name": name or source,
        "source": source,
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        "image_size": image_size,
        "channels": data.channels,
        "mean": mean,
        "std": std,
        "split_sizes": {part: split_length(splits[part]) for part in ("train", "val", "test")},
        "split_digests": {part: split_digest(splits[part]) for part in ("train", "val", "test")},
    }
    return spec, {part: splits[part] for part in ("train", "val", "test")}


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images [N, C, H, W], in [0, 1] units."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64) / 255
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1, correction=0).tolist()
