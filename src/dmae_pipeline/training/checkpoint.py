"""Training checkpoints: atomic writes and code-free loads.

No random state is stored: the engine reseeds every stream at the start of each epoch from the
seed, the process's rank and the epoch, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dmae_pipeline.io import atomic_torch_save, safe_torch_load

LAST = "last.pt"
BEST = "best.pt"


CHECKPOINT_KEYS = (
    "model", "optimizer", "scaler", "epoch", "step", "cfg", "train_size", "history", "best"
)  # fmt: skip


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    **progress: Any,
) -> None:
    """Everything needed to continue exactly where the run stands: the states of ``model``,
    ``optimizer`` and ``scaler``, and ``progress`` (the rest of CHECKPOINT_KEYS)."""
    modules = {"model": model, "optimizer": optimizer, "scaler": scaler}
    atomic_torch_save({**{k: m.state_dict() for k, m in modules.items()}, **progress}, path)


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
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])


def save_best(path: str | Path, model: torch.nn.Module, record: dict[str, Any]) -> None:
    """The selected epoch's weights with its record (epoch, selected metric, all metrics)."""
    atomic_torch_save({"model": model.state_dict(), "best": record}, path)


def load_best(path: str | Path) -> dict[str, Any]:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "best" not in state:
        raise ValueError(f"{path} is not a best-weights file: expected 'model' and 'best' entries")
    return state
