"""Weights in and out: the released DMAE/MAE formats and the pipeline's own.

Released pretrained files are a plain state dict; released finetuned files and the pipeline's
checkpoints hold it under 'model'. Encoder names are timm's VisionTransformer names, so one loader
serves the DMAE and the classifier.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from dmae_pipeline.io import atomic_torch_save, safe_torch_load
from dmae_pipeline.models.pos_embed import grid_size_of

logger = logging.getLogger(__name__)

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
# DistributedDataParallel's and torch.compile's, in either nesting (the engine compiles DDP)
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")
StateSource = str | Path | Mapping[str, Any]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def read_state_dict(src: StateSource) -> dict[str, torch.Tensor]:
    """A state dict from a file or an in-memory object: plain, or under 'model' (other keys such
    as 'config', 'epoch', 'optimizer' are ignored); wrapper prefixes like 'module.' are stripped."""
    name = f"checkpoint {src}" if isinstance(src, str | Path) else "the given state dict"
    if isinstance(src, str | Path):
        if not Path(src).is_file():
            raise FileNotFoundError(f"checkpoint {src} does not exist")
        src = safe_torch_load(src)
    if isinstance(src, Mapping) and isinstance(src.get("model"), Mapping):
        src = src["model"]
    if (
        not isinstance(src, Mapping)
        or not src
        or not all(isinstance(v, torch.Tensor) for v in src.values())
    ):
        raise ValueError(
            f"{name} is not a state dict: expected {{name: tensor}} "
            "or {'model': {name: tensor}}"
        )
    state = dict(src)
    for prefix in WRAPPER_PREFIXES:
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def _depth(keys: Any, prefix: str) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _summary(keys: list[str]) -> str:
    """Keys grouped by their top-level module: 'head.weight, head.bias, decoder_blocks.* (24)'."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    parts = [", ".join(g) if len(g) <= 2 else f"{top}.* ({len(g)})" for top, g in groups.items()]
    return "; ".join(parts) or "none"


def load_pretrained(model: nn.Module, src: StateSource) -> tuple[list[str], list[str]]:
    """Load weights into a DMAE or a classifier; returns (missing_keys, unexpected_keys).

    Position tables (pos_embed, decoder_pos_embed) of another patch grid: a fixed table
    (requires_grad False in the model: the DMAE's sin-cos tables) keeps the model's own, computed
    for its grid; a learnable one (the classifier's) is resampled with timm's
    ``resample_abs_pos_embed`` (bicubic, cls row kept). Any other shape mismatch, or an
    encoder/decoder of another depth, is refused with a ValueError naming the key. Keys the model
    lacks (a decoder loaded into a classifier) and keys the checkpoint lacks (a new head) are
    reported in one log message, with the tables recomputed or resampled.
    """
    target = unwrap(model)
    name = f"checkpoint {src}" if isinstance(src, str | Path) else "state dict"
    state = read_state_dict(src)
    own = target.state_dict()
    params = dict(target.named_parameters())
    for prefix in ("blocks", "decoder_blocks"):
        have, want = _depth(state, prefix), _depth(own, prefix)
        if have and want and have != want:
            raise ValueError(
                f"{name} has {have} '{prefix}' but the model has {want}: another depth"
            )
    notes = []
    for key in POS_EMBED_KEYS:
        theirs, ours = state.get(key), own.get(key)
        # Same width, other token count: another patch grid. Other widths fail the check below.
        if (
            theirs is not None
            and ours is not None
            and theirs.shape[1] != ours.shape[1]
            and theirs.shape[-1] == ours.shape[-1]
        ):
            old, new = grid_size_of(theirs), grid_size_of(ours)
            if key in params and params[key].requires_grad:
                state[key] = resample_abs_pos_embed(theirs, new_size=[new, new])
                notes.append(f"{key} resampled from a {old}x{old} to a {new}x{new} grid")
            else:
                state[key] = ours
                notes.append(
                    f"fixed {key} recomputed for the {new}x{new} grid "
                    f"(the checkpoint's {old}x{old} table is not used)"
                )
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            raise ValueError(
                f"{name}: '{key}' has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)} (another width, patch size or channel count?)"
            )
    if not set(state) & set(own):
        raise ValueError(f"{name} shares no parameter name with the {type(target).__name__}")
    missing, unexpected = target.load_state_dict(state, strict=False)
    logger.info(
        "Loaded %d tensors from %s into %s%s. Missing (left as initialized): %s. "
        "Unexpected (ignored): %s.",
        len(state) - len(unexpected),
        name,
        type(target).__name__,
        "".join(f"; {n}" for n in notes),
        _summary(list(missing)),
        _summary(list(unexpected)),
    )
    return list(missing), list(unexpected)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, without wrapper prefixes (DDP, torch.compile)."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def export_pretrained(model: nn.Module, path: str | Path) -> None:
    """Write the released plain state dict (DMAE: encoder + decoder; classifier: encoder +
    fc_norm + head), atomically."""
    atomic_torch_save(cpu_state(model), path)


def export_finetuned(
    model: nn.Module, path: str | Path, epoch: int, args: Mapping[str, Any] | None = None
) -> None:
    """Write the released finetuned format {'model', 'epoch', 'args'} (no optimizer state).
    ``args`` should hold plain values (numbers, strings, lists, dicts) so it loads weights-only."""
    atomic_torch_save(
        {"model": cpu_state(model), "epoch": int(epoch), "args": dict(args or {})}, path
    )
