"""Training checkpoints: atomic writes, code-free loads, and every RNG state as tensors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmae_pipeline.io import atomic_torch_save, safe_torch_load

LAST = "last.pt"
BEST = "best.pt"


def capture_rng(noise_generator: torch.Generator) -> dict[str, Any]:
    """Global torch/CUDA/numpy/python RNG states and the noise generator's, as tensors and
    plain values so that a weights-only load reads them."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "noise": noise_generator.get_state(),
    }
    if noise_generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(noise_generator.device)
    return state


def restore_rng(state: dict[str, Any], noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    noise_generator.set_state(state["noise"])
    if "cuda" in state and noise_generator.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], noise_generator.device)


CHECKPOINT_KEYS = (
    "model", "optimizer", "scaler", "epoch", "step", "rng", "cfg", "train_size", "history", "best"
)  # fmt: skip


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    noise_generator: torch.Generator,
    epoch: int,
    step: int,
    cfg: dict[str, Any],
    train_size: int,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
) -> None:
    """Everything needed to continue exactly where the run stands after ``epoch`` epochs."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng": capture_rng(noise_generator),
        "cfg": cfg,
        "train_size": train_size,
        "history": history,
        "best": best,
    }
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint` (weights-only load)."""
    state = safe_torch_load(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint: missing {missing}")
    return state


def restore_checkpoint(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    noise_generator: torch.Generator,
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], noise_generator)


def save_best(path: str | Path, model: torch.nn.Module, record: dict[str, Any]) -> None:
    """The selected epoch's weights with its record (epoch, selected metric, all metrics)."""
    atomic_torch_save({"model": model.state_dict(), "best": record}, path)


def load_best(path: str | Path) -> dict[str, Any]:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "best" not in state:
        raise ValueError(f"{path} is not a best-weights file: expected 'model' and 'best' entries")
    return state
