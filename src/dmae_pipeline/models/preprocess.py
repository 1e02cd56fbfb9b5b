"""The models' first step: [0,1] pixels at the native resolution -> normalized model input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize (align_corners False) to size x size; identity when already there."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def register_normalization(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Per-channel mean/std as non-persistent buffers: they follow .to(device) but stay out of
    state dicts, so checkpoints keep the released key set."""
    shape = (1, len(mean), 1, 1)
    module.register_buffer("mean", torch.tensor(mean).reshape(shape), persistent=False)
    module.register_buffer("std", torch.tensor(std).reshape(shape), persistent=False)


def normalize(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (x - module.mean) / module.std


def denormalize(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x * module.std + module.mean
