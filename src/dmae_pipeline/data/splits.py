"""Splits: their two forms, seeded held-out splits, and subsets.

A split is a dict in one of two forms:

- in memory: ``{"images": uint8 tensor [N, C, H, W], "labels": int64 tensor [N]}``
- on disk: ``{"root": str, "paths": [str relative to root], "labels": int64 tensor [N]}``
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dmae_pipeline.io import state_digest

IN_MEMORY_KEYS = frozenset({"images", "labels"})
ON_DISK_KEYS = frozenset({"root", "paths", "labels"})


@dataclass(frozen=True)
class Source:
    """A dataset as its reader finds it, before validation (and test) images are held out.

    ``splits`` holds "train" and, when the source ships one, "test". ``mean``/``std`` of None
    mean "compute them from the train split".
    """

    splits: dict[str, dict]
    class_names: list[str]
    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def check_split(split: Mapping) -> str:
    """Check the split's keys, dtypes and lengths; return where its images are: "memory" or
    "disk"."""
    if not isinstance(split, Mapping):
        raise ValueError(f"a split must be a dict, got {type(split).__name__}")
    keys = set(split)
    labels = split.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError("a split's 'labels' must be a 1-D int64 tensor")
    if keys == IN_MEMORY_KEYS:
        images = split["images"]
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("an in-memory split's 'images' must be a uint8 tensor [N, C, H, W]")
        if len(images) != len(labels):
            raise ValueError(f"split has {len(images)} images but {len(labels)} labels")
        return "memory"
    if keys == ON_DISK_KEYS:
        if not isinstance(split["root"], str) or not isinstance(split["paths"], list):
            raise ValueError("an on-disk split needs 'root' as a str and 'paths' as a list of str")
        if len(split["paths"]) != len(labels):
            raise ValueError(f"split has {len(split['paths'])} paths but {len(labels)} labels")
        return "disk"
    raise ValueError(
        f"a split must have keys {sorted(IN_MEMORY_KEYS)} or {sorted(ON_DISK_KEYS)}, "
        f"got {sorted(keys)}"
    )


def split_digest(split: Mapping) -> str:
    """SHA-256 of a split's images (or file list) and labels; not of ``root``, which moves with
    the data."""
    tensors = {k: v for k, v in split.items() if torch.is_tensor(v)}
    other = {k: v for k, v in split.items() if k not in tensors and k != "root"}
    text = state_digest(tensors) + json.dumps(other, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def split_length(split: Mapping) -> int:
    check_split(split)
    return len(split["labels"])


def subset(split: Mapping, indices: torch.Tensor) -> dict:
    """The split restricted to ``indices`` (a copy: saving it never drags the parent along)."""
    if check_split(split) == "memory":
        return {"images": split["images"][indices], "labels": split["labels"][indices]}
    paths = split["paths"]
    return {
        "root": split["root"],
        "paths": [paths[i] for i in indices.tolist()],
        "labels": split["labels"][indices],
    }


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """The sizes of the named held-out parts of ``n`` items, ``round(fraction * n)`` each, and of
    "train", the rest."""
    sizes = {name: round(fraction * n) for name, fraction in fractions.items()}
    return {**sizes, "train": n - sum(sizes.values())}


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Seeded partition of ``range(n)`` into the named held-out parts and "train", of
    :func:`split_sizes`.

    Each part's indices are sorted (file order is kept, which helps disk reads); shuffling is the
    loader's job. A fraction that rounds to no images, or leaves none for training, is an error
    that names the ``<name>_fraction`` parameter.
    """
    sizes = split_sizes(n, fractions)
    for name, fraction in fractions.items():
        if sizes[name] < 1:
            raise ValueError(
                f"{name}_fraction={fraction} holds out no {name} images out of {n}; raise it"
            )
    if sizes["train"] < 1:
        names = " + ".join(f"{name}_fraction" for name in fractions)
        raise ValueError(f"{names} leaves no training images out of {n}; lower them")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = order[start : start + size].sort().values
        start += size
    return parts
