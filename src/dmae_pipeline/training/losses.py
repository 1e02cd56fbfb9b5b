"""Classification losses for noise-augmented finetuning.

``consistency_loss`` is the consistency regularization of Jeong & Shin (2020);
``noisy_classification_loss`` builds the engine's ``loss_fn`` for a classifier trained under
Gaussian noise, with optional mixup/cutmix (timm's ``Mixup``) and label smoothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup

LossFn = Callable[[torch.nn.Module, tuple, torch.Generator], torch.Tensor]


def consistency_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    m: int,
    lam: float,
    eta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE over all noisy copies + lam * mean_i KL(p_hat || p_i) + eta * H(p_hat), batch-averaged.

    ``logits`` is [m*B, K], m blocks of B: copy i of sample b is row i*B + b. ``labels`` is [B]
    (class indices) or [B, K] (soft targets, e.g. from mixup). p_i = softmax of copy i and
    p_hat = mean_i p_i, computed in log space (logsumexp) so no probability is ever logged at 0.
    With m = 1 there is no consistency to enforce and the loss is the cross-entropy alone.
    """
    if logits.ndim != 2 or logits.shape[0] % m:
        raise ValueError(f"logits: expected shape [m*B, K] with m={m}, got {tuple(logits.shape)}")
    n, k = logits.shape
    b = n // m
    if labels.shape[0] != b or labels.ndim not in (1, 2):
        raise ValueError(f"labels: expected shape [{b}] or [{b}, {k}], got {tuple(labels.shape)}")
    logits = logits.float()
    targets = labels.repeat(m) if labels.ndim == 1 else labels.float().repeat(m, 1)
    ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if m == 1 or (lam == 0 and eta == 0):
        return ce
    log_p = F.log_softmax(logits, dim=-1).view(m, b, k)
    log_p_hat = torch.logsumexp(log_p, dim=0) - math.log(m)
    p_hat = log_p_hat.exp()
    kl = (p_hat * (log_p_hat - log_p)).sum(-1).mean(0)
    entropy = -(p_hat * log_p_hat).sum(-1)
    return ce + (lam * kl + eta * entropy).mean()


@contextmanager
def _numpy_seeded(seed: int):
    """timm's Mixup draws from numpy's global RNG: seed it for the call, then put it back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def noisy_classification_loss(
    *,
    sigma: float,
    num_classes: int,
    m: int = 1,
    lam: float = 0.0,
    eta: float = 0.0,
    label_smoothing: float = 0.0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    mixup_prob: float = 1.0,
    mixup_switch_prob: float = 0.5,
) -> LossFn:
    """The engine's ``loss_fn(model, (images, labels), generator)`` for Gaussian-noise finetuning.

    Per batch of B, in the public DMAE code's order: each [0,1] image repeated ``m`` times (copy i
    of sample b is row i*B + b); N(0, sigma^2) noise drawn from ``generator`` and added in
    float32; then, if enabled, mixup/cutmix on the m*B noisy images (timm ``Mixup``, batch mode,
    with its label smoothing, seeded from ``generator``), so that a mixed image carries the two
    independent noises of its two sources. Batch mode mixes row r with row m*B - 1 - r, so the m
    copies of a sample share one soft target; the logits are scored by :func:`consistency_loss`
    (plain noise augmentation when m = 1).
    """
    mixer = None
    if mixup > 0 or cutmix > 0:
        mixer = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=mixup_prob,
            switch_prob=mixup_switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
    # Mixup's soft targets already carry the smoothing.
    ce_smoothing = 0.0 if mixer is not None else label_smoothing

    def loss_fn(model: torch.nn.Module, batch: tuple, generator: torch.Generator) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        b = images.shape[0]
        x = images.float().repeat(m, *([1] * (images.ndim - 1)))
        if sigma > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = x + sigma * noise
        if mixer is not None:
            if x.shape[0] % 2:
                raise ValueError(
                    "mixup/cutmix pair the noisy copies of a batch and need an even number of "
                    f"them: m * batch size = {m} * {b}"
                )
            seed = torch.randint(2**32, (), generator=generator, device=generator.device)
            with _numpy_seeded(int(seed)):
                x, targets = mixer(x, labels.repeat(m))
            labels = targets[:b]  # the m blocks of targets are equal: one per sample
        return consistency_loss(model(x), labels, m, lam, eta, label_smoothing=ce_smoothing)

    return loss_fn
