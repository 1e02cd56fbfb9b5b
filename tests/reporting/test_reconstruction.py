"""The reconstruction figure: rows, un-normalization of norm_pix predictions, rendering."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

from dmae_pipeline.models import build_dmae
from dmae_pipeline.models.dmae import Reconstruction
from dmae_pipeline.reporting.reconstruction import (
    MASKED_GRAY,
    reconstruction_figure,
    reconstruction_panels,
)


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_figure_renders_four_rows_and_keeps_training_mode(tiny):
    model = build_dmae("tiny", **tiny).train()
    fig = reconstruction_figure(model, torch.rand(3, 3, 8, 8), "pretrain", seeded())
    assert model.training
    assert len(fig.axes) == 4 * 3
    assert all(len(ax.images) == 1 for ax in fig.axes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def test_the_title_names_the_stage_and_the_models_sigma(tiny):
    """pretrain and cifar_pretrain each draw one: their titles tell them apart."""
    model = build_dmae("tiny", **tiny, sigma=0.25, mask_ratio=0.75)
    titles = [
        reconstruction_figure(model, torch.rand(1, 3, 8, 8), stage, seeded()).get_suptitle()
        for stage in ("pretrain", "cifar_pretrain")
    ]
    assert titles == [
        "pretrain: DMAE reconstruction (sigma_0.25, mask ratio 0.75)",
        "cifar_pretrain: DMAE reconstruction (sigma_0.25, mask ratio 0.75)",
    ]


def test_grayscale_for_one_channel(tiny):
    model = build_dmae("tiny", **tiny, in_chans=1, mean=[0.5], std=[0.5])
    fig = reconstruction_figure(model, torch.rand(2, 1, 16, 16), "pretrain", seeded())
    image = fig.axes[0].images[0]
    assert image.get_cmap().name == "gray"
    assert image.get_array().shape == (16, 16)


def test_panels_unnormalize_with_the_target_patch_statistics(tiny, monkeypatch):
    """A perfect norm_pix prediction maps back to the clean image; visible patches show the
    noisy input; masked ones are gray in the input row."""
    model = build_dmae("tiny", **tiny, sigma=0.1).eval()
    real = model.reconstruct

    def perfect(imgs, mask_ratio=None, generator=None):
        out = real(imgs, mask_ratio, generator)
        return out._replace(pred=model.target_patches(out.clean))

    monkeypatch.setattr(model, "reconstruct", perfect)
    imgs = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    clean, masked_input, pasted, raw = reconstruction_panels(model, imgs, seeded())
    up = F.interpolate(imgs, size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(clean, up)
    torch.testing.assert_close(raw, clean, atol=1e-3, rtol=0)
    out: Reconstruction = perfect(imgs, generator=seeded())
    hidden = model.unpatchify(out.mask.unsqueeze(-1).expand(-1, -1, 48)).bool()
    noisy_px = (out.noisy * model.std + model.mean).clamp(0, 1)
    assert torch.all(masked_input[hidden] == MASKED_GRAY)
    torch.testing.assert_close(masked_input[~hidden], noisy_px[~hidden])
    torch.testing.assert_close(pasted[~hidden], noisy_px[~hidden])
    torch.testing.assert_close(pasted[hidden], clean[hidden], atol=1e-3, rtol=0)
