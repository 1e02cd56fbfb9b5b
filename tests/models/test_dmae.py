"""The DMAE forward pass: corruption order, masking, loss, names, sizes and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from dmae_pipeline.models import DMAE, build_classifier, build_dmae
from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def by_hand_patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def released_names(depth: int, decoder_depth: int) -> set[str]:
    block = [
        f"{n}.{t}"
        for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for t in ("weight", "bias")
    ]
    names = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    names |= {f"blocks.{i}.{b}" for i in range(depth) for b in block}
    names |= {"norm.weight", "norm.bias", "mask_token", "decoder_pos_embed"}
    names |= {f"decoder_{n}.{t}" for n in ("embed", "norm", "pred") for t in ("weight", "bias")}
    names |= {f"decoder_blocks.{i}.{b}" for i in range(decoder_depth) for b in block}
    return names


def test_state_dict_names_are_the_released_and_timm_ones(tiny):
    model = build_dmae("tiny", **tiny)
    state = model.state_dict()
    assert set(state) == released_names(tiny["depth"], tiny["decoder_depth"])
    assert state["pos_embed"].shape == (1, 1 + 16, 32)
    assert state["decoder_pos_embed"].shape == (1, 1 + 16, 16)
    vit = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0
    )
    encoder = {k: v.shape for k, v in state.items() if k != "mask_token" and "decoder" not in k}
    assert encoder == {k: v.shape for k, v in vit.state_dict().items()}
    assert state["mask_token"].shape == (1, 1, 16)
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert model.blocks[0].attn.qkv.bias is not None


def test_position_tables_are_fixed_sincos(tiny):
    model = build_dmae("tiny", **tiny)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed, sincos_pos_embed_2d(32, 4))
    assert torch.equal(model.decoder_pos_embed, sincos_pos_embed_2d(16, 4))
    loss, _, _ = model(torch.rand(2, 3, 16, 16), generator=seeded())
    loss.backward()
    assert model.pos_embed.grad is None
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.decoder_pred.weight.grad.abs().sum() > 0


def test_noise_is_added_at_native_resolution_before_resize(tiny, monkeypatch):
    """sigma 0 vs 0.5 with one seed: same target and mask, encoder inputs differ by exactly the
    resized noise; the noise is drawn at the native 8x8 size, in float32."""
    clean_model = build_dmae("tiny", **tiny, sigma=0.0)
    noisy_model = build_dmae("tiny", **tiny, sigma=0.5)
    noisy_model.load_state_dict(clean_model.state_dict())
    delta = torch.zeros(2, 3, 8, 8)
    delta[:, :, 3, 4] = 1.0
    draws = []

    def fake_randn(size, generator=None, device=None, dtype=None):
        draws.append((tuple(size), dtype))
        return delta.clone()

    monkeypatch.setattr(torch, "randn", fake_randn)
    seen = []
    for m in (clean_model, noisy_model):
        m.patch_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    imgs = torch.rand(2, 3, 8, 8)
    out0 = clean_model.reconstruct(imgs, generator=seeded(1))
    assert draws == []  # sigma 0 draws no pixel noise
    out1 = noisy_model.reconstruct(imgs, generator=seeded(1))
    assert draws == [((2, 3, 8, 8), torch.float32)]

    mean, std = clean_model.mean, clean_model.std
    up = F.interpolate(imgs, size=(16, 16), mode="bicubic", align_corners=False)
    expected_clean = (up - mean) / std
    torch.testing.assert_close(out0.clean, expected_clean)
    torch.testing.assert_close(out1.clean, expected_clean)
    torch.testing.assert_close(seen[0], expected_clean)
    noise_up = F.interpolate(0.5 * delta, size=(16, 16), mode="bicubic", align_corners=False) / std
    torch.testing.assert_close(seen[1] - seen[0], noise_up, atol=1e-5, rtol=0)
    assert (noise_up.abs() > 1e-3).sum() > 2 * 3 * 4  # the bicubic resize spread the noise
    assert torch.equal(out0.mask, out1.mask)


def test_draws_come_from_the_generator(tiny):
    model = build_dmae("tiny", **tiny)
    imgs = torch.rand(4, 3, 16, 16)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = model(imgs, generator=seeded(5))
    assert torch.equal(torch.get_rng_state(), global_state)
    b = model(imgs, generator=seeded(5))
    c = model(imgs, generator=seeded(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[2], c[2])


def test_mask_counts_per_sample(tiny):
    model = build_dmae("tiny", **tiny)
    shapes = []
    model.blocks[0].register_forward_pre_hook(lambda mod, args: shapes.append(args[0].shape))
    imgs = torch.rand(6, 3, 16, 16)
    _, pred, mask = model(imgs, generator=seeded())
    assert pred.shape == (6, 16, 4 * 4 * 3)
    assert mask.shape == (6, 16)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum(dim=1).tolist() == [12.0] * 6
    assert len({tuple(row.tolist()) for row in mask}) > 1  # per-sample masks
    assert shapes[-1] == (6, 1 + 4, 32)  # cls + the 4 visible patches
    _, _, mask = model(imgs, mask_ratio=0.5, generator=seeded())
    assert mask.sum(dim=1).tolist() == [8.0] * 6
    _, _, mask = model(imgs, mask_ratio=0.0, generator=seeded())
    assert mask.sum() == 0 and shapes[-1] == (6, 17, 32)


def test_loss_over_all_patches_or_masked_ones_by_hand(tiny):
    all_model = build_dmae("tiny", **tiny, loss_on="all")
    masked_model = build_dmae("tiny", **tiny, loss_on="masked", sigma=0.0)
    masked_model.load_state_dict(all_model.state_dict())
    imgs = torch.rand(3, 3, 12, 12)
    for model in (all_model, masked_model):
        out = model.reconstruct(imgs, generator=seeded(2))
        target = by_hand_patchify(out.clean, 4)
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ).sqrt()
        per_patch = ((out.pred - target) ** 2).mean(-1)
        if model.loss_on == "all":
            expected = per_patch.mean()
        else:
            expected = (per_patch * out.mask).sum() / out.mask.sum()
            assert not torch.isclose(expected, per_patch.mean())
        torch.testing.assert_close(out.loss, expected)


def test_norm_pix_target_and_patch_layout(tiny):
    model = build_dmae("tiny", **tiny)
    imgs = torch.rand(2, 3, 16, 16)
    patches = model.patchify(imgs)
    torch.testing.assert_close(patches, by_hand_patchify(imgs, 4))
    torch.testing.assert_close(
        patches[:, 1], imgs[:, :, :4, 4:8].permute(0, 2, 3, 1).reshape(2, -1)
    )
    torch.testing.assert_close(model.unpatchify(patches), imgs)
    target = model.target_patches(imgs)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)
    raw = build_dmae("tiny", **tiny, norm_pix_loss=False)
    torch.testing.assert_close(raw.target_patches(imgs), patches)
    # a flat patch (a digit's black border) has variance 0: eps keeps its target finite, 0
    assert torch.equal(
        model.target_patches(torch.full((1, 3, 16, 16), 0.3)), torch.zeros(1, 16, 48)
    )


def test_encoder_parameter_counts_without_forward():
    def encoder_params(model):
        return sum(
            p.numel()
            for n, p in model.named_parameters()
            if not n.startswith(("decoder", "mask_token", "head", "fc_norm"))
        )

    with torch.device("meta"):
        base, large = build_dmae("base"), build_dmae("large")
        classifier = build_classifier("base", num_classes=1000)
    assert 85.5e6 < encoder_params(base) < 87.0e6  # ViT-B/16 encoder: ~86M
    assert 302.5e6 < encoder_params(large) < 305.0e6  # ViT-L/16 encoder: ~304M
    # the classifier's encoder is the same network (fc_norm replaces the final norm)
    assert encoder_params(classifier) + 2 * 768 == encoder_params(base)
    assert base.config["decoder_embed_dim"] == 512 and base.config["decoder_depth"] == 8
    assert large.config["decoder_num_heads"] == 16


def test_config_rebuilds_the_model_and_mae_is_a_setting(tiny):
    model = build_dmae("tiny", **tiny, sigma=0.5, mean=[0.5] * 3, std=[0.25] * 3)
    again = build_dmae(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert (model.sigma, model.mask_ratio, model.loss_on, model.norm_pix_loss) == (
        0.5,
        0.75,
        "all",
        True,
    )
    mae = build_dmae("tiny", **tiny, sigma=0.0, loss_on="masked")
    assert (mae.sigma, mae.loss_on) == (0.0, "masked")


@pytest.mark.parametrize("mask_ratio", [1.0, 0.95, 1.5])
def test_a_mask_ratio_that_leaves_no_visible_patch_is_refused(tiny, mask_ratio):
    """16 patches: 0.95 keeps int(16 * 0.05) = 0 of them."""
    message = rf"mask_ratio={mask_ratio} leaves no visible patch of the 16"
    with pytest.raises(ValueError, match=message):
        build_dmae("tiny", **tiny, mask_ratio=mask_ratio)
    model = build_dmae("tiny", **tiny)
    with pytest.raises(ValueError, match=message):
        model(torch.rand(1, 3, 16, 16), mask_ratio=mask_ratio)
    _, _, mask = model(torch.rand(1, 3, 16, 16), mask_ratio=0.9)  # int(16 * 0.1) = 1 is enough
    assert mask.sum() == 15


def test_bad_preset_and_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match=r"preset must be one of \[.*'tiny'.*\], got 'huge'"):
        build_dmae("huge")
    with pytest.raises(ValueError, match=r"unknown model arguments \['dropout'\]; accepted: \["):
        build_dmae("tiny", **tiny, dropout=0.1)
    with pytest.raises(ValueError, match=r"loss_on must be one of \('all', 'masked'\)"):
        build_dmae("tiny", **tiny, loss_on="visible")
    model = build_dmae("tiny", **tiny)
    with pytest.raises(ValueError, match="imgs"):
        model(torch.rand(1, 1, 16, 16))


def by_hand_pred(model, noisy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The DMAE's prediction written without any shuffle: each patch embedded with its own
    position, the visible ones encoded in patch order, mask tokens put straight at the masked
    positions."""
    tokens = model.patch_embed(noisy) + model.pos_embed[:, 1:]
    cls = model.cls_token[0] + model.pos_embed[0, :1]
    preds = []
    for sample, hidden in zip(tokens, mask.bool(), strict=True):
        latent = model.norm(model.blocks(torch.cat([cls, sample[~hidden]])[None]))
        latent = model.decoder_embed(latent)[0]
        full = model.mask_token[0].expand(len(hidden), -1).clone()
        full[~hidden] = latent[1:]
        x = torch.cat([latent[:1], full]) + model.decoder_pos_embed[0]
        x = model.decoder_norm(model.decoder_blocks(x[None]))
        preds.append(model.decoder_pred(x)[0, 1:])
    return torch.stack(preds)


def shuffle_errors(model, mask_ratio: float) -> tuple[float, float]:
    """Largest deviations of the prediction from the unshuffled one and, at mask_ratio 0,
    between two mask draws (the model has sigma 0: the draws differ only in the shuffle)."""
    imgs = torch.rand(3, 3, 16, 16, generator=seeded(0))
    with torch.no_grad():
        out = model.reconstruct(imgs, mask_ratio=mask_ratio, generator=seeded(1))
        to_reference = (out.pred - by_hand_pred(model, out.noisy, out.mask)).abs().max().item()
        between_draws = 0.0
        if mask_ratio == 0:
            a = model.reconstruct(imgs, mask_ratio=0.0, generator=seeded(1)).pred
            b = model.reconstruct(imgs, mask_ratio=0.0, generator=seeded(2)).pred
            between_draws = (a - b).abs().max().item()
    return to_reference, between_draws


class OrderNotRestored(DMAE):
    """Wrong on purpose: the decoder leaves the tokens in their shuffled order."""

    def forward_decoder(self, x, ids_restore):
        b, length = ids_restore.shape
        return super().forward_decoder(x, torch.arange(length).expand(b, length))


class PositionsAfterMasking(DMAE):
    """Wrong on purpose: positions are added after masking, by place in the shuffle."""

    def forward_encoder(self, x, mask_ratio, mask_noise):
        x, mask, ids_restore = self.random_masking(self.patch_embed(x), mask_ratio, mask_noise)
        x = x + self.pos_embed[:, 1 : 1 + x.shape[1]]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, x], dim=1))), mask, ids_restore


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75])
def test_prediction_does_not_depend_on_the_shuffle(tiny, mask_ratio):
    """Each patch keeps its position through masking and unmasking: the prediction equals one
    computed without shuffling and, at mask_ratio 0, is the same for every mask draw. The
    wrong variants above fail both."""
    model = build_dmae("tiny", **tiny, sigma=0.0)
    to_reference, between_draws = shuffle_errors(model, mask_ratio)
    assert to_reference < 1e-4 and between_draws < 1e-4
    config = {k: v for k, v in model.config.items() if k != "preset"}
    for wrong in (OrderNotRestored, PositionsAfterMasking):
        variant = wrong(**config)
        variant.load_state_dict(model.state_dict())
        to_reference, between_draws = shuffle_errors(variant, mask_ratio)
        assert to_reference > 1e-2, wrong.__name__
        assert between_draws > 1e-2 or mask_ratio > 0, wrong.__name__
