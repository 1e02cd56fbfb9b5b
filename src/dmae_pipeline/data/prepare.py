"""Data preparation: checked parameters -> dataset spec and train/val/test splits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlparse

import torch

from dmae_pipeline.data import cifar10
from dmae_pipeline.data.digits import read_digits
from dmae_pipeline.data.imagefolder import read_imagefolder
from dmae_pipeline.data.splits import Source, carve, split_length, subset

SOURCES = ("digits", "cifar10", "imagefolder")
# Parameters that only some sources read; setting one for another source is a mistake.
ONLY_FOR = {
    "test_fraction": ("digits",),
    "raw_dir": ("cifar10", "imagefolder"),
    "download": ("cifar10",),
    "url": ("cifar10",),
    "md5": ("cifar10",),
}


@dataclass(frozen=True)
class DataPrepConfig:
    """The ``data_prep`` parameters, checked. Build it with :meth:`from_params`."""

    source: str
    image_size: int
    name: str
    val_fraction: float = 0.1
    test_fraction: float | None = None
    seed: int = 0
    raw_dir: str = "data/01_raw"
    download: bool = False
    url: str = cifar10.URL
    md5: str = cifar10.MD5

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "data_prep") -> DataPrepConfig:
        """Check every parameter before any work; errors name ``<prefix>.<parameter>``."""
        if not isinstance(params, Mapping):
            raise ValueError(f"{prefix} must be a mapping of parameters, got {params!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"{prefix} has unknown parameters {unknown}; known: {sorted(known)}")
        given = {k: v for k, v in params.items() if v is not None}

        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{prefix}.{key} must be {expected}, got {params[key]!r}")

        source = given.get("source")
        if source not in SOURCES:
            raise ValueError(f"{prefix}.source must be one of {list(SOURCES)}, got {source!r}")
        for key, sources in ONLY_FOR.items():
            if key in given and source not in sources:
                raise ValueError(
                    f"{prefix}.{key} applies only to source {' or '.join(sources)}, not {source}; "
                    "remove it or set it to null"
                )

        if source == "cifar10":
            given.setdefault("image_size", cifar10.IMAGE_SIZE)
            if given["image_size"] != cifar10.IMAGE_SIZE:
                raise bad("image_size", f"{cifar10.IMAGE_SIZE} for cifar10 (its native size)")
        if "image_size" not in given:
            raise ValueError(f"{prefix}.image_size is required for source {source}")
        if not _is_int(given["image_size"]) or given["image_size"] < 1:
            raise bad("image_size", "a positive integer")
        if not isinstance(given.setdefault("name", source), str) or not given["name"]:
            raise bad("name", "a non-empty string")

        for key in ("val_fraction", "test_fraction"):
            if key in given and not (_is_number(given[key]) and 0 < given[key] < 1):
                raise bad(key, "a number strictly between 0 and 1")
        if source == "digits":
            given.setdefault("test_fraction", 0.2)
            held_out = given.get("val_fraction", cls.val_fraction) + given["test_fraction"]
            if held_out >= 1:
                raise ValueError(
                    f"{prefix}.val_fraction + {prefix}.test_fraction = {held_out:g} leaves no "
                    "training data; their sum must be below 1"
                )
        if "seed" in given and not _is_int(given["seed"]):
            raise bad("seed", "an integer")
        if "raw_dir" in given and not (isinstance(given["raw_dir"], str) and given["raw_dir"]):
            raise bad("raw_dir", "a folder path")
        if "download" in given and not isinstance(given["download"], bool):
            raise bad("download", "true or false")
        if "url" in given and not (
            isinstance(given["url"], str) and urlparse(given["url"]).scheme in ("http", "https")
        ):
            raise bad("url", "an http(s) URL")
        if "md5" in given and not (
            isinstance(given["md5"], str) and re.fullmatch(r"[0-9a-fA-F]{32}", given["md5"])
        ):
            raise bad("md5", "32 hexadecimal digits")
        return cls(**given)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_source(config: DataPrepConfig) -> Source:
    if config.source == "digits":
        return read_digits(config.image_size)
    if config.source == "cifar10":
        return cifar10.read_cifar10(
            config.raw_dir, download=config.download, url=config.url, md5=config.md5
        )
    return read_imagefolder(config.raw_dir)


def prepare(config: DataPrepConfig) -> tuple[dict[str, Any], dict[str, dict]]:
    """Read the source, hold out seeded validation (and, for digits, test) images from its
    train split, and describe the result. Returns ``(dataset_spec, {"train", "val", "test"})``.
    """
    source = read_source(config)
    own = source.splits
    held_out = {"val": config.val_fraction}
    if "test" not in own:
        held_out["test"] = config.test_fraction
    parts = carve(split_length(own["train"]), held_out, config.seed)
    splits = {name: subset(own["train"], indices) for name, indices in parts.items()}
    if "test" in own:
        splits["test"] = own["test"]
    if source.mean is None:
        mean, std = channel_stats(splits["train"]["images"])
    else:
        mean, std = list(source.mean), list(source.std)
    spec = {
        "name": config.name,
        "source": config.source,
        "num_classes": len(source.class_names),
        "class_names": list(source.class_names),
        "image_size": config.image_size,
        "channels": source.channels,
        "mean": mean,
        "std": std,
        "split_sizes": {name: split_length(splits[name]) for name in ("train", "val", "test")},
    }
    return spec, {name: splits[name] for name in ("train", "val", "test")}


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images [N, C, H, W], in [0, 1] units."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64) / 255
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1, correction=0).tolist()
