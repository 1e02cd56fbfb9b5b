"""AdamW param groups: no weight decay on biases, norms, 1-D params and tokens; layer-wise lr decay
(MAE/BEiT rule); a fused optimizer over them."""

from __future__ import annotations

import pytest
import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from dmae_pipeline.models import build_classifier, build_dmae
from dmae_pipeline.training import build_optimizer, param_groups

TINY_ENCODER = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2)
TINY_DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


class TokenNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 8))
        self.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 8), requires_grad=False)
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.scale = torch.nn.Parameter(torch.ones(8))
        self.extra = torch.nn.Parameter(torch.zeros(3, 8))
        self.head = torch.nn.Linear(8, 4)

    def no_weight_decay(self):
        return {"extra"}


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def by_name(model, groups) -> dict[str, tuple[float, float]]:
    """name -> (lr_scale, weight_decay); fails if a parameter is in two groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            assert name not in table, f"{name} in two groups"
            table[name] = (group.get("lr_scale", 1.0), group["weight_decay"])
    return table


def described(model, groups) -> list[tuple]:
    """Each group, in order, as (parameter names, weight decay, lr_scale or None)."""
    return [(_names(model, g), g["weight_decay"], g.get("lr_scale")) for g in groups]


# The two helpers these groups replace, as they were: the expected groups.
def old_weight_decay_groups(model, weight_decay):
    names = [
        n for n, _ in model.named_parameters()
        if n.rsplit(".", 1)[-1]
        in ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "dist_token")
    ]  # fmt: skip
    if hasattr(model, "no_weight_decay"):
        names.extend(model.no_weight_decay())
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=sorted(set(names)))


def old_param_groups_lrd(model, weight_decay, layer_decay, no_weight_decay_list=()):
    skip = set(no_weight_decay_list) | set(getattr(model, "no_weight_decay", set)())
    return param_groups_layer_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
    )


@pytest.mark.parametrize("kind", ["dmae", "classifier"])
def test_groups_are_the_ones_the_old_helpers_gave(kind):
    model = (
        build_dmae("tiny", **TINY_ENCODER, **TINY_DECODER)
        if kind == "dmae"
        else build_classifier("tiny", 5, **TINY_ENCODER)
    )
    assert described(model, param_groups(model, 0.05)) == described(
        model, old_weight_decay_groups(model, 0.05)
    )
    assert described(model, param_groups(model, 0.05, layer_decay=0.65)) == described(
        model, old_param_groups_lrd(model, 0.05, 0.65)
    )
    patterns = ("decoder_pred.*", "head.*")
    assert described(
        model, param_groups(model, 0.05, layer_decay=0.5, no_weight_decay_list=patterns)
    ) == described(model, old_param_groups_lrd(model, 0.05, 0.5, patterns))


def test_only_weight_matrices_are_decayed():
    model = TokenNet()
    groups = param_groups(model, 0.05)
    assert len(groups) == 2 and all("lr_scale" not in g for g in groups)
    by_wd = {g["weight_decay"]: _names(model, g) for g in groups}
    assert by_wd[0.05] == ["head.weight", "proj.weight"]
    assert by_wd[0.0] == [
        "cls_token", "extra", "head.bias", "mask_token", "norm.bias", "norm.weight",
        "pos_embed", "proj.bias", "scale",
    ]  # fmt: skip
    # frozen parameters (fixed sin-cos embeddings) are not optimized at all
    assert "decoder_pos_embed" not in by_wd[0.0] + by_wd[0.05]


def test_classifier_layer_decay():
    model = build_classifier("tiny", 5, **TINY_ENCODER)
    table = by_name(model, param_groups(model, weight_decay=0.05, layer_decay=0.5))
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


def test_dmae_groups_skip_frozen_tables_and_tokens():
    model = build_dmae("tiny", **TINY_ENCODER, **TINY_DECODER)
    table = by_name(model, param_groups(model, 0.05, no_weight_decay_list=("decoder_pred.*",)))
    assert "pos_embed" not in table and "decoder_pos_embed" not in table  # fixed
    assert table["mask_token"] == (1.0, 0.0)
    assert table["cls_token"] == (1.0, 0.0)
    assert table["decoder_pred.weight"] == (1.0, 0.0)
    assert table["decoder_blocks.0.mlp.fc1.weight"] == (1.0, 0.05)
    decayed = by_name(model, param_groups(model, 0.05, layer_decay=0.5))
    assert decayed["norm.weight"][0] == decayed["decoder_embed.weight"][0] == 1.0
    assert decayed["blocks.2.mlp.fc1.weight"][0] == 0.5


def test_wrapped_models_give_the_groups_of_the_module_inside():
    model = TokenNet()
    wrapped = torch.nn.DataParallel(model)
    assert described(model, param_groups(wrapped, 0.05)) == described(
        model, param_groups(model, 0.05)
    )


def test_build_optimizer_is_fused_and_keeps_given_groups_and_their_extras():
    model = TokenNet()
    given = [
        {"params": [model.proj.weight], "weight_decay": 0.05, "lr_scale": 0.5},
        {"params": [model.head.weight], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    opt = build_optimizer(model, weight_decay=0.1, betas=(0.9, 0.999), groups=given)
    assert [g["lr_scale"] for g in opt.param_groups] == [0.5, 1.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.999) and g["fused"] for g in opt.param_groups)
    default = build_optimizer(model, weight_decay=0.1, betas=(0.9, 0.999))
    assert all(g["fused"] for g in default.param_groups)
    assert [g["weight_decay"] for g in default.param_groups] == [0.0, 0.1]


def test_build_optimizer_refuses_malformed_groups():
    with pytest.raises(ValueError, match="param_groups"):
        build_optimizer(TokenNet(), weight_decay=0.1, betas=(0.9, 0.95), groups=[])
    with pytest.raises(ValueError, match="param_groups"):
        build_optimizer(TokenNet(), weight_decay=0.1, betas=(0.9, 0.95), groups=[{}])
