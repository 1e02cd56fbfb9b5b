"""AdamW param groups: no weight decay on biases, norms, 1-D params and tokens."""

from __future__ import annotations

import pytest
import torch

from dmae_pipeline.training import build_optimizer, weight_decay_groups


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


def test_only_weight_matrices_are_decayed():
    model = TokenNet()
    groups = weight_decay_groups(model, 0.05)
    by_wd = {g["weight_decay"]: _names(model, g) for g in groups}
    assert by_wd[0.05] == ["head.weight", "proj.weight"]
    assert by_wd[0.0] == [
        "cls_token", "extra", "head.bias", "mask_token", "norm.bias", "norm.weight",
        "pos_embed", "proj.bias", "scale",
    ]  # fmt: skip
    # frozen parameters (fixed sin-cos embeddings) are not optimized at all
    assert "decoder_pos_embed" not in by_wd[0.0] + by_wd[0.05]


def test_build_optimizer_keeps_given_groups_and_their_extras():
    model = TokenNet()
    given = [
        {"params": [model.proj.weight], "weight_decay": 0.05, "lr_scale": 0.5},
        {"params": [model.head.weight], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    opt = build_optimizer(model, weight_decay=0.1, betas=(0.9, 0.999), param_groups=given)
    assert [g["lr_scale"] for g in opt.param_groups] == [0.5, 1.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_build_optimizer_refuses_malformed_groups():
    with pytest.raises(ValueError, match="param_groups"):
        build_optimizer(TokenNet(), weight_decay=0.1, betas=(0.9, 0.95), param_groups=[])
    with pytest.raises(ValueError, match="param_groups"):
        build_optimizer(TokenNet(), weight_decay=0.1, betas=(0.9, 0.95), param_groups=[{}])
