"""A tiny, fast training setup shared by the engine's tests.

Run as a script (``python tiny_training.py RUN_DIR OUT``) it trains one short run and saves the
final weights and history to OUT; with DMAE_TEST_KILL_AT_CALL=n set, the process kills itself
(os._exit, no cleanup) at the n-th loss evaluation, as a crash or a preemption would.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dmae_pipeline.training import TrainConfig, fit

KILL_ENV = "DMAE_TEST_KILL_AT_CALL"
KILLED_EXIT_CODE = 17


def tiny_cfg(**overrides) -> TrainConfig:
    settings = {
        "epochs": 3,
        "warmup_epochs": 1,
        "blr": 0.5,
        "min_lr": 1e-4,
        "batch_size": 8,
        "accum_iter": 1,
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "clip_grad": None,
        "seed": 0,
        "checkpoint_every": 1,
        "device": "cpu",
        "num_threads": 1,
    }
    return TrainConfig(**{**settings, **overrides})


class JitteredSet(Dataset):
    """Fixed features; every read adds jitter from torch's, numpy's and python's global RNGs,
    as random augmentations do."""

    def __init__(self, n: int = 64, dim: int = 6, classes: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x[:, :classes].argmax(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        jitter = 0.1 * torch.rand(self.x.shape[1]) + 0.1 * np.random.rand() + 0.1 * random.random()
        return (self.x[i] + jitter).float(), self.y[i]


def make_mlp(seed: int = 0, dim: int = 6, classes: int = 3) -> torch.nn.Module:
    """A small MLP with dropout (dropout draws from torch's global RNG during training)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(dim, 16),
            torch.nn.GELU(),
            torch.nn.Dropout(0.2),
            torch.nn.LayerNorm(16),
            torch.nn.Linear(16, classes),
        )


def noisy_ce(model: torch.nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    x, y = batch
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return F.cross_entropy(model(x + 0.1 * noise), y)


def resume_run(run_dir: str | Path, out: str | Path) -> int:
    """Train 5 epochs in run_dir (resuming if possible); returns how many losses it computed."""
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    calls = 0

    def loss_fn(model, batch, generator):
        nonlocal calls
        calls += 1
        if calls == kill_at:
            os._exit(KILLED_EXIT_CODE)
        return noisy_ce(model, batch, generator)

    model = make_mlp()
    cfg = tiny_cfg(epochs=5, checkpoint_every=2, accum_iter=2, clip_grad=1.0)
    result = fit(model, JitteredSet(), loss_fn=loss_fn, cfg=cfg, run_dir=run_dir)
    torch.save({"model": model.state_dict(), "history": result["history"]}, out)
    return calls


if __name__ == "__main__":
    resume_run(sys.argv[1], sys.argv[2])
