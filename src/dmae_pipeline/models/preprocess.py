"""The models' first step: [0,1] pixels at the native resolution -> normalized model input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize (align_corners False) to size x size; identity when already there.

    No antialiasing, as in the public DMAE code: its CIFAR-10 finetuning and evaluation upsample
    the noisy 32x32 batch with ``transforms.Resize((224, 224), BICUBIC)`` on tensors, which did
    not antialias under the torchvision it was written for. Since torchvision 0.17 that call
    antialiases by default, a different cubic kernel on upsampling: on noisy CIFAR-sized images
    it changes the upsampled pixels by 0.02 on average (up to 0.14) and moves a finetuned
    ViT-B's logits by about 0.09, so weights trained by the public code would see other inputs.
    """
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
