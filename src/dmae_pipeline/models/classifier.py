"""The finetuning classifier: the DMAE encoder + global average pooling + fc_norm + linear head."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d
from dmae_pipeline.models.preprocess import normalize, register_normalization, resize
from dmae_pipeline.models.presets import CLASSIFIER_DEFAULTS, ENCODER_KEYS, resolve_config


class ViTClassifier(VisionTransformer):
    """timm's VisionTransformer (so the encoder keys are the released ones) taking [0,1] pixels at
    any native resolution: they are bicubic-resized to ``img_size`` and normalized inside, so noise
    for augmentation and certification is added in pixel space before the model."""

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        mean: Sequence[float],
        std: Sequence[float],
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool="avg",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,  # unused by the pooling, kept so that released weights load
            fc_norm=True,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.img_size = img_size
        register_normalization(self, mean, std)
        with torch.no_grad():
            # Learnable, but starts from the sin-cos table so that training from scratch works.
            self.pos_embed.copy_(sincos_pos_embed_2d(embed_dim, img_size // patch_size))
        trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self.config: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x [B, C, h, w] in [0, 1] -> logits [B, num_classes]."""
        return super().forward(normalize(self, resize(x, self.img_size)))


def classifier_config(preset: str, num_classes: int, **overrides: Any) -> dict[str, Any]:
    """The preset with free overrides of img_size, patch_size, in_chans, embed_dim, depth,
    num_heads, mlp_ratio, drop_path_rate, mean, std: the preset, num_classes and every resolved
    argument of a classifier."""
    keys = (*ENCODER_KEYS, "mean", "std", *CLASSIFIER_DEFAULTS)
    return {
        **resolve_config(preset, overrides, keys, CLASSIFIER_DEFAULTS),
        "num_classes": num_classes,
    }


def build_classifier(preset: str, num_classes: int, **overrides: Any) -> ViTClassifier:
    """A ViT classifier from a preset and overrides (see :func:`classifier_config`).

    ``model.config`` holds the preset, num_classes and every resolved argument:
    ``build_classifier(**model.config)`` rebuilds the same architecture.
    """
    config = classifier_config(preset, num_classes, **overrides)
    model = ViTClassifier(**{k: v for k, v in config.items() if k != "preset"})
    model.config = config
    return model
