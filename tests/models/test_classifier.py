"""The finetuning classifier: preprocessing inside the model, head, pooling and configuration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from dmae_pipeline.models import build_classifier, build_dmae, encoder_config, load_pretrained
from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d


def test_forward_resizes_native_input_and_normalizes_inside(tiny_encoder):
    model = build_classifier("tiny", 5, **tiny_encoder, mean=[0.4] * 3, std=[0.2] * 3).eval()
    x = torch.rand(3, 3, 8, 8)
    logits = model(x)
    assert logits.shape == (3, 5)
    up = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(logits, VisionTransformer.forward(model, (up - 0.4) / 0.2))
    torch.testing.assert_close(model(up), logits)  # at img_size: no resize
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)  # larger native images too


def test_head_pooling_and_position_table(tiny_encoder):
    model = build_classifier("tiny", 7, **tiny_encoder)
    assert model.global_pool == "avg" and model.cls_token is not None
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    state = model.state_dict()
    assert "fc_norm.weight" in state and "norm.weight" not in state
    assert "mean" not in state and "std" not in state
    assert 0 < model.head.weight.std() < 1e-4  # trunc-normal, std 2e-5
    assert torch.equal(model.head.bias, torch.zeros(7))
    assert model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed.detach(), sincos_pos_embed_2d(32, 4))


def test_drop_path_and_config_rebuild(tiny_encoder):
    model = build_classifier("tiny", 3, **tiny_encoder, drop_path_rate=0.2)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.config["num_classes"] == 3 and model.config["drop_path_rate"] == 0.2
    again = build_classifier(**model.config)
    assert again.config == model.config


def test_classifier_from_a_dmae_config(tiny):
    dmae = build_dmae("tiny", **tiny, mean=[0.5] * 3, std=[0.3] * 3)
    model = build_classifier(num_classes=4, **encoder_config(dmae.config))
    assert model.config["mean"] == [0.5] * 3
    load_pretrained(model, dmae.state_dict())
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, dmae.blocks[1].mlp.fc2.weight)


def test_decoder_arguments_are_refused(tiny_encoder):
    with pytest.raises(ValueError, match=r"unknown model arguments \['decoder_depth'\]"):
        build_classifier("tiny", 3, **tiny_encoder, decoder_depth=2)
