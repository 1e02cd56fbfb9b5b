"""Learning-rate rule and schedule (as in MAE): linear warmup, then half-cycle cosine to min_lr."""

from __future__ import annotations

import math

import torch


def peak_lr(blr: float, batch_size: int, accum_iter: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256."""
    return blr * batch_size * accum_iter / 256


def lr_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """The learning rate at a fractional epoch in [0, epochs].

    Linear from 0 to ``lr`` over ``warmup_epochs``, then a half cosine from ``lr`` down to
    ``min_lr`` at ``epochs``.
    """
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every param group ``lr`` times its optional ``lr_scale`` (layer-wise lr decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
