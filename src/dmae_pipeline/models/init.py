"""Where a model's weights start: seeded random weights, a pipeline checkpoint, a released DMAE/MAE
file or a finetuned classifier."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models.classifier import ViTClassifier, build_classifier
from dmae_pipeline.models.weights import load_pretrained, read_state_dict

M = TypeVar("M", bound=nn.Module)


def read_init(src: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, model config) of a checkpoint file or object: a pipeline checkpoint
    {"model", "config", ...}, a released plain state dict or a public training checkpoint
    {"model", "optimizer", "args", ...}; the config is None when the checkpoint holds none."""
    checkpoint = safe_torch_load(src) if isinstance(src, str | Path) else src
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    return read_state_dict(checkpoint), dict(config) if isinstance(config, Mapping) else None


def seeded(build: Callable[..., M], seed: int, **config: Any) -> M:
    """``build(**config)`` with its random initial weights drawn from ``seed``; the global RNG
    is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(**config)


def load_init(model: nn.Module, state: Mapping[str, torch.Tensor], new_keys: Collection[str] = ()):
    """Load initial weights; refuse a state dict that lacks any of the model's tensors except
    those under ``new_keys`` (e.g. a classifier's new head)."""
    missing, _ = load_pretrained(model, state)
    lacking = [k for k in missing if not k.startswith(tuple(new_keys))]
    if lacking:
        raise ValueError(
            f"the initial weights lack {len(lacking)} of the {type(model).__name__}'s tensors, "
            f"e.g. {lacking[:3]}: expected a checkpoint of the same architecture"
        )


def load_classifier(checkpoint: Mapping[str, Any], name: str, **expected: Any) -> ViTClassifier:
    """The classifier of a finetuned checkpoint {"model", "config", "sigma", ...}, in eval mode.

    Refuses, naming the checkpoint ``name``, one that is malformed, whose weights do not fit its
    config, or whose config differs from ``expected`` (e.g. num_classes=10).
    """
    if not isinstance(checkpoint, Mapping) or not {"model", "config", "sigma"} <= set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ValueError(f"{name} must hold 'model', 'config' and 'sigma', got {keys}")
    sigma = checkpoint["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"{name} has sigma {sigma!r}; expected a positive number")
    config = dict(checkpoint["config"])
    for key, value in expected.items():
        if config.get(key) != value:
            raise ValueError(f"{name} is a classifier with {key}={config.get(key)!r}, not {value}")
    model = build_classifier(**config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(f"{name}: its weights do not fit its config: {e}") from e
    return model.eval()
