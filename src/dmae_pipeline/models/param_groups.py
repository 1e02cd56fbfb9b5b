"""Optimizer parameter groups with layer-wise lr decay (BEiT/MAE finetuning), via timm."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from timm.optim import param_groups_layer_decay
from torch import nn

from dmae_pipeline.models.checkpoint import unwrap


def param_groups_lrd(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay_list: Collection[str] = (),
) -> list[dict[str, Any]]:
    """AdamW groups, each with "lr_scale" = layer_decay ** (num_layers - layer_id), where
    cls_token/pos_embed/patch_embed are layer 0, blocks.i is layer i + 1 and everything after
    the blocks (norm, fc_norm, head; the DMAE's decoder) the last layer (scale 1).

    No weight decay for 1-D parameters (biases, norms), the model's ``no_weight_decay()`` names
    (position tables, cls and mask tokens) and ``no_weight_decay_list`` (fnmatch patterns).
    Frozen parameters are left out. ``layer_decay=1`` gives plain weight-decay groups.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    model = unwrap(model)
    skip = set(no_weight_decay_list) | set(getattr(model, "no_weight_decay", set)())
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=skip,
        layer_decay=layer_decay,
    )
