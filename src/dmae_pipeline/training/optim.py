"""AdamW with MAE's weight-decay exclusions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.optim import param_groups_weight_decay

# Parameters named like this never get weight decay, whatever their shape.
NO_DECAY_NAMES = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "dist_token")


def no_weight_decay_names(model: torch.nn.Module) -> list[str]:
    """Full names of the position embeddings and tokens, plus the model's own no_weight_decay()."""
    names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in NO_DECAY_NAMES]
    if hasattr(model, "no_weight_decay"):
        names.extend(model.no_weight_decay())
    return sorted(set(names))


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: decay on weight matrices; none on biases, norms, 1-D params and tokens.

    Frozen parameters (requires_grad False, e.g. fixed sin-cos position embeddings) are left out.
    """
    return param_groups_weight_decay(
        model, weight_decay, no_weight_decay_list=no_weight_decay_names(model)
    )


def build_optimizer(
    model: torch.nn.Module,
    *,
    weight_decay: float,
    betas: Sequence[float],
    param_groups: list[dict] | None = None,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (e.g. layer-decay groups with "lr_scale") or the default groups.

    The learning rate is set per step by the schedule, so it starts at 0 here.
    """
    if param_groups is None:
        param_groups = weight_decay_groups(model, weight_decay)
    elif not param_groups or not all(isinstance(g, dict) and "params" in g for g in param_groups):
        raise ValueError("param_groups: expected a non-empty list of dicts with a 'params' entry")
    return torch.optim.AdamW(
        param_groups, lr=0.0, betas=tuple(betas), weight_decay=weight_decay, fused=fused
    )
