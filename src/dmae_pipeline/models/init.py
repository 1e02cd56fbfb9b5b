"""Where a model's weights start: seeded random weights, a pipeline checkpoint, a released DMAE/MAE
file or a finetuned classifier."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models.classifier import ViTClassifier, build_classifier, classifier_config
from dmae_pipeline.models.presets import PRESETS
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


def public_classifier_config(
    state: Mapping[str, torch.Tensor], mean: list[float], std: list[float]
) -> dict[str, Any]:
    """The classifier config of a state dict with the public DMAE code's names (its
    ``models_vit.VisionTransformer`` with global pooling): the architecture from the tensors'
    shapes (the heads from the preset of that width and depth), the pixel statistics given."""
    try:
        width, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
        num_classes = state["head.weight"].shape[0]
        tokens = state["pos_embed"].shape[1] - 1
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"lacks {e}: not a ViT classifier of the public DMAE code") from None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    preset = next(
        (p for p, s in PRESETS.items() if (s["embed_dim"], s["depth"]) == (width, depth)), None
    )
    if preset is None:
        raise ValueError(
            f"is a ViT {width} wide and {depth} deep, which no preset is ({sorted(PRESETS)}), so "
            "its number of heads is unknown"
        )
    return classifier_config(
        preset,
        num_classes,
        img_size=round(tokens**0.5) * patch,
        patch_size=patch,
        in_chans=in_chans,
        mlp_ratio=hidden / width,
        mean=mean,
        std=std,
    )


def finetuned_sigma(checkpoint: Any, name: str) -> float:
    """The noise level a finetuned checkpoint was trained at: its 'sigma' (the pipeline's) or its
    ``args.sigma`` (the public DMAE code's {"model", "optimizer", "epoch", "scaler", "args"})."""
    if isinstance(checkpoint, Mapping) and "config" not in checkpoint and "args" in checkpoint:
        sigma = getattr(checkpoint["args"], "sigma", None)
    elif isinstance(checkpoint, Mapping) and {"model", "config", "sigma"} <= set(checkpoint):
        sigma = checkpoint["sigma"]
    else:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ValueError(
            f"{name} must hold 'model', 'config' and 'sigma' (the finetune pipeline's) or "
            f"'model' and 'args' with args.sigma (the public DMAE code's), got {keys}"
        )
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"{name} has sigma {sigma!r}; expected a positive number")
    return float(sigma)


def load_classifier(checkpoint: Mapping[str, Any], name: str, **expected: Any) -> ViTClassifier:
    """The classifier of a finetuned checkpoint, in eval mode: the finetune pipeline's
    {"model", "config", "sigma", ...}, or the public DMAE code's {"model", "args", ...}, whose
    config comes from its weights' shapes and ``expected``'s pixel statistics (mean, std).

    Refuses, naming the checkpoint ``name``, one that is malformed, whose weights do not fit its
    config, or whose config differs from ``expected`` (e.g. num_classes=10, the dataset's mean).
    """
    finetuned_sigma(checkpoint, name)
    if "config" in checkpoint:
        config = dict(checkpoint["config"])
    else:
        try:
            config = public_classifier_config(
                checkpoint["model"], expected["mean"], expected["std"]
            )
        except ValueError as e:
            raise ValueError(f"{name} {e}") from None
    for key, value in expected.items():
        if config.get(key) != value:
            raise ValueError(f"{name} is a classifier with {key}={config.get(key)!r}, not {value}")
    model = build_classifier(**config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(f"{name}: its weights do not fit its config: {e}") from e
    return model.eval()
