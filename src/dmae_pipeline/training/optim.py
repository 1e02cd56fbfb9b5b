"""AdamW with MAE's weight-decay exclusions and BEiT/MAE layer-wise lr decay (timm's groups)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from dmae_pipeline.models.weights import unwrap

# Parameters named like this never get weight decay, whatever their shape.
NO_DECAY_NAMES = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "dist_token")


def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full names of the position embeddings and tokens, plus the model's own no_weight_decay()."""
    names = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in NO_DECAY_NAMES}
    return names | set(getattr(model, "no_weight_decay", set)())


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    no_weight_decay_list: Collection[str] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model`` (unwrapped from DDP/compile wrappers).

    No weight decay for 1-D parameters (biases, norms), position embeddings and cls/mask tokens,
    the model's ``no_weight_decay()`` names and ``no_weight_decay_list`` (fnmatch patterns);
    ``weight_decay`` for the rest. Frozen parameters are left out.

    ``layer_decay == 1`` gives two groups (no decay, decay). Otherwise each group also has
    "lr_scale" = layer_decay ** (num_layers - layer_id), by the model's timm ``group_matcher``:
    cls_token/pos_embed/patch_embed are layer 0, blocks.i is layer i + 1 and everything after
    the blocks (norm, fc_norm, head; the DMAE's decoder) the last layer (scale 1).
    """
    model = unwrap(model)
    skip = no_weight_decay_names(model) | set(no_weight_decay_list)
    if layer_decay == 1:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return param_groups_layer_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
    )


def build_optimizer(
    model: torch.nn.Module,
    *,
    weight_decay: float,
    betas: Sequence[float],
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.AdamW:
    """Fused AdamW over ``groups`` (e.g. layer-decay groups with "lr_scale"), by default
    :func:`param_groups` of ``model`` without layer decay.

    The fused kernel updates every parameter in one pass and can skip a step on the device when
    told of a non-finite gradient (GradScaler's ``found_inf``), without a host sync. The learning
    rate is set per step by the schedule, so it starts at 0 here.
    """
    if groups is None:
        groups = param_groups(model, weight_decay)
    elif not groups or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise ValueError("param_groups: expected a non-empty list of dicts with a 'params' entry")
    return torch.optim.AdamW(
        groups, lr=0.0, betas=tuple(betas), weight_decay=weight_decay, fused=True
    )
