"""Layer-wise lr decay groups (MAE/BEiT rule) and the no-weight-decay set."""

from __future__ import annotations

import pytest

from dmae_pipeline.models import build_classifier, build_dmae, param_groups_lrd


def by_name(model, groups) -> dict[str, tuple[float, float]]:
    """name -> (lr_scale, weight_decay); fails if a parameter is in two groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            assert name not in table, f"{name} in two groups"
            table[name] = (group["lr_scale"], group["weight_decay"])
    return table


def test_classifier_layer_decay(tiny_encoder):
    model = build_classifier("tiny", 5, **{**tiny_encoder, "depth": 3})
    table = by_name(model, param_groups_lrd(model, weight_decay=0.05, layer_decay=0.5))
    assert set(table) == {n for n, p in model.named_parameters() if p.requires_grad}
    # 3 blocks: embeddings are layer 0, blocks.i layer i + 1, the head layer 4 (scale 1)
    assert table["cls_token"] == (0.5**4, 0.0)
    assert table["pos_embed"] == (0.5**4, 0.0)
    assert table["patch_embed.proj.weight"] == (0.5**4, 0.05)
    assert table["patch_embed.proj.bias"] == (0.5**4, 0.0)
    for i in range(3):
        assert table[f"blocks.{i}.attn.qkv.weight"] == (0.5 ** (3 - i), 0.05)
        assert table[f"blocks.{i}.attn.qkv.bias"] == (0.5 ** (3 - i), 0.0)
        assert table[f"blocks.{i}.norm1.weight"] == (0.5 ** (3 - i), 0.0)
    assert table["fc_norm.weight"] == (1.0, 0.0)
    assert table["head.weight"] == (1.0, 0.05)
    assert table["head.bias"] == (1.0, 0.0)


def test_dmae_groups_skip_frozen_tables_and_tokens(tiny):
    model = build_dmae("tiny", **tiny)
    groups = param_groups_lrd(
        model, weight_decay=0.05, layer_decay=1.0, no_weight_decay_list=("decoder_pred.*",)
    )
    table = by_name(model, groups)
    assert "pos_embed" not in table and "decoder_pos_embed" not in table  # fixed
    assert table["mask_token"] == (1.0, 0.0)
    assert table["cls_token"] == (1.0, 0.0)
    assert table["decoder_pred.weight"] == (1.0, 0.0)
    assert table["decoder_blocks.0.mlp.fc1.weight"] == (1.0, 0.05)
    assert {scale for scale, _ in table.values()} == {1.0}
    decayed = by_name(model, param_groups_lrd(model, 0.05, 0.5))
    assert decayed["norm.weight"][0] == decayed["decoder_embed.weight"][0] == 1.0
    assert decayed["blocks.1.mlp.fc1.weight"][0] == 0.5


@pytest.mark.parametrize(
    ("wd", "ld", "name"), [(0.05, 0.0, "layer_decay"), (-1.0, 0.5, "weight_decay")]
)
def test_bad_values_are_refused(tiny_encoder, wd, ld, name):
    model = build_classifier("tiny", 5, **tiny_encoder)
    with pytest.raises(ValueError, match=name):
        param_groups_lrd(model, wd, ld)
