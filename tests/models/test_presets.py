"""Presets and the resolution of model arguments."""

from __future__ import annotations

import re

import pytest
import torch

from dmae_pipeline.models import PRESETS, build_classifier, build_dmae


def test_small_presets_for_cpu_runs():
    assert PRESETS["nano"] == dict(
        embed_dim=128,
        depth=4,
        num_heads=4,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
    )
    assert PRESETS["pico"] == dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    for preset in ("pico", "nano"):
        model = build_dmae(preset, img_size=16, patch_size=4)
        assert (
            model.config["preset"] == preset
            and len(model.decoder_blocks) == PRESETS[preset]["decoder_depth"]
        )
        loss, pred, _ = model(torch.rand(2, 3, 16, 16), generator=torch.Generator())
        assert torch.isfinite(loss) and pred.shape == (2, 16, 48)
        classifier = build_classifier(preset, 3, img_size=16, patch_size=4)
        assert classifier.embed_dim == PRESETS[preset]["embed_dim"]


def test_overrides_win_over_the_preset():
    model = build_dmae("pico", img_size=16, patch_size=4, depth=3, decoder_embed_dim=16)
    assert len(model.blocks) == 3 and model.mask_token.shape[-1] == 16
    assert model.config["embed_dim"] == 32


def test_unknown_preset_or_argument_names_the_accepted_ones():
    names = sorted(PRESETS)
    assert names == ["base", "large", "nano", "pico", "small", "tiny"]
    with pytest.raises(ValueError, match=re.escape(f"preset must be one of {names}, got 'medium'")):
        build_classifier("medium", 10)
    with pytest.raises(ValueError, match=r"unknown model arguments \['sigma'\]; accepted: .*'std'"):
        build_classifier("pico", 10, sigma=0.25)
