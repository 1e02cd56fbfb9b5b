"""What the DMAE sees and what it reconstructs, as images (the figure is drawn by reporting/)."""

from __future__ import annotations

import torch

from dmae_pipeline.models.checkpoint import unwrap
from dmae_pipeline.models.dmae import DMAE, NORM_PIX_EPS
from dmae_pipeline.models.preprocess import denormalize

PANELS = ("clean", "noisy + masked", "reconstruction\n+ visible", "reconstruction")
"""The rows of :func:`reconstruction_panels`, in order."""
MASKED_GRAY = 0.5


@torch.no_grad()
def reconstruction_panels(
    model: DMAE, imgs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[4, B, C, H, W] images in [0, 1] at the model resolution: clean, noisy input with masked
    patches gray, reconstruction with the visible (noisy) patches pasted back, raw reconstruction.

    norm_pix predictions are mapped back to pixels with each clean target patch's mean and
    variance, the statistics the loss standardized them with.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model.reconstruct(imgs.to(device), generator=generator)
    finally:
        model.train(was_training)
    pred = out.pred.float()
    if model.norm_pix_loss:
        target = model.patchify(out.clean)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
    mask = out.mask.unsqueeze(-1)  # [B, L, 1], 1 = masked
    noisy = model.patchify(out.noisy)

    def to_pixels(patches: torch.Tensor) -> torch.Tensor:
        return denormalize(model, model.unpatchify(patches)).clamp(0, 1)

    noisy_px = to_pixels(noisy)
    hidden = model.unpatchify(mask.expand_as(noisy)).bool()
    noisy_masked = noisy_px.masked_fill(hidden, MASKED_GRAY)
    panels = [
        denormalize(model, out.clean).clamp(0, 1),
        noisy_masked,
        to_pixels(noisy * (1 - mask) + pred * mask),
        to_pixels(pred),
    ]
    return torch.stack(panels).cpu()
