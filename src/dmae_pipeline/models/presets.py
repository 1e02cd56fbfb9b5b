"""Model presets and argument resolution shared by the DMAE and the classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# Encoder sizes follow ViT-Ti/S/B/L; base/large use MAE's decoder (512 wide, 8 blocks, 16 heads).
# nano (128 wide, 4 blocks) and pico (32 wide, 2 blocks) are small models for CPU runs and tests.
PRESETS: dict[str, dict[str, int]] = {
    "pico": dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    ),
    "nano": dict(
        embed_dim=128,
        depth=4,
        num_heads=4,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
    "tiny": dict(
        embed_dim=192,
        depth=12,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=4,
        decoder_num_heads=4,
    ),
    "small": dict(
        embed_dim=384,
        depth=12,
        num_heads=6,
        decoder_embed_dim=256,
        decoder_depth=4,
        decoder_num_heads=8,
    ),
    "base": dict(
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    ),
    "large": dict(
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    ),
}

ENCODER_DEFAULTS: dict[str, Any] = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    mlp_ratio=4.0,
    mean=tuple(IMAGENET_DEFAULT_MEAN),
    std=tuple(IMAGENET_DEFAULT_STD),
)
DMAE_DEFAULTS: dict[str, Any] = dict(sigma=0.25, mask_ratio=0.75, norm_pix_loss=True, loss_on="all")
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(drop_path_rate=0.0)

ENCODER_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
)
DECODER_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def resolve_config(
    preset: str, overrides: Mapping[str, Any], keys: Sequence[str], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Preset values, then defaults, then overrides; unknown override names are refused."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise ValueError(f"unknown model arguments {unknown}; accepted: {sorted(keys)}")
    values = {**ENCODER_DEFAULTS, **defaults, **PRESETS[preset], **overrides}
    config = {"preset": preset, **{k: values[k] for k in keys}}
    config["mean"] = [float(v) for v in config["mean"]]
    config["std"] = [float(v) for v in config["std"]]
    return config


def encoder_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder part of a (partial) DMAE or classifier config: ``build_classifier(
    num_classes=K, **encoder_config(dmae.config))`` builds a classifier whose encoder matches the
    DMAE's."""
    return {k: config[k] for k in ("preset", *ENCODER_KEYS, "mean", "std") if k in config}
