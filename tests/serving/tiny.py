"""A tiny finetuned checkpoint whose answers depend on the noise, and a dataset spec to match."""

from __future__ import annotations

import numpy as np
import torch

from dmae_pipeline.models import build_classifier, seeded
from dmae_pipeline.serving import Limits
from dmae_pipeline.smoothing import CertifySettings

SIGMA = 0.25
SPEC = {
    "name": "digits",
    "image_size": 16,
    "channels": 1,
    "mean": [0.3],
    "std": [0.4],
    "class_names": [str(c) for c in range(10)],
}
DEFAULTS = CertifySettings(n0=10, n=100, alpha=0.001, batch_size=32)
RADII = (0.0, 0.25, 0.5)  # what a sequential request settles unless it names its radii
LIMITS = Limits(max_n=1000, max_images=8)


def tiny_checkpoint(seed: int = 0) -> dict:
    """A one-block ViT at 16x16 with random weights large enough that the noise changes its
    answers: a finetune partition {"model", "config", "sigma", ...}."""
    model = seeded(
        build_classifier,
        seed,
        preset="tiny",
        num_classes=10,
        img_size=16,
        patch_size=8,
        in_chans=1,
        embed_dim=32,
        depth=1,
        num_heads=2,
        mean=SPEC["mean"],
        std=SPEC["std"],
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5, generator=generator)
    return {"model": model.state_dict(), "config": model.config, "sigma": SIGMA, "epoch": 1}


def images(count: int, seed: int = 0) -> np.ndarray:
    """``count`` float32 images in [0, 1] at the spec's resolution."""
    return np.random.default_rng(seed).random((count, 1, 16, 16), dtype=np.float32)
