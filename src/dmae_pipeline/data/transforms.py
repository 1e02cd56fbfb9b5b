"""torchvision v2 transforms from a dataset spec: augmentation for training, resizing for eval.

In-memory splits are already at the spec's native resolution; on-disk images (any size) are
brought to it. Every transform ends in a float32 tensor in [0, 1]: normalization is the model's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data import auto_augment
from torchvision.transforms import v2

ON_DISK_SOURCES = frozenset({"imagefolder"})
EVAL_CROP_FRACTION = 0.875  # eval resizes to size / 0.875, then center-crops size


def to_float() -> v2.Compose:
    """uint8 tensor or PIL image -> float32 tensor in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def build_transform(
    spec: Mapping[str, Any], train: bool, augment: Mapping[str, Any] | None = None
) -> v2.Compose:
    """The transform for one split of the dataset ``spec`` describes.

    ``augment`` (used only when ``train``) may hold ``hflip: bool``,
    ``random_resized_crop: {scale: [lo, hi]}`` (bicubic, to the spec's image_size) and
    ``rand_augment``: a timm RandAugment config such as ``"rand-m9-mstd0.5-inc1"``.
    """
    size = int(spec["image_size"])
    on_disk = spec["source"] in ON_DISK_SOURCES
    augment = dict(augment or {}) if train else {}
    steps: list[Any] = []
    crop = augment.get("random_resized_crop")
    if crop is not None:
        steps.append(
            v2.RandomResizedCrop(
                size,
                scale=tuple(crop["scale"]),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            )
        )
    elif on_disk:
        steps += [
            v2.Resize(
                math.floor(size / EVAL_CROP_FRACTION),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.CenterCrop(size),
        ]
    if augment.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    if augment.get("rand_augment"):
        if not on_disk:
            steps.append(v2.ToPILImage())  # timm's RandAugment works on PIL images
        steps.append(_rand_augment(augment["rand_augment"], size, spec["mean"]))
    steps += to_float().transforms
    return v2.Compose(steps)


def _rand_augment(config: str, size: int, mean: list[float]) -> auto_augment.RandAugment:
    hparams = {
        "translate_const": int(size * 0.45),
        "img_mean": tuple(round(255 * m) for m in mean),
        "interpolation": Image.BICUBIC,
    }
    try:
        rand_augment = auto_augment.rand_augment_transform(config, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"augment.rand_augment={config!r} is not a timm RandAugment config") from e
    for op in rand_augment.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize
    return rand_augment


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, keeping 0 bits to mean a black image (current Pillow refuses bits=0,
    which timm's increasing posterize reaches at magnitude 10)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)
