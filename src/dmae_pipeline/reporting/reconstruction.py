"""The DMAE reconstruction figure: what the model sees and what it reconstructs (matplotlib, no
pyplot state)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from dmae_pipeline.models import DMAE
from dmae_pipeline.models.dmae import norm_pix_stats
from dmae_pipeline.models.preprocess import denormalize
from dmae_pipeline.models.weights import unwrap
from dmae_pipeline.reporting.names import sigma_label

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
    standard deviation, the statistics the loss standardized them with.
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
        mean, std = norm_pix_stats(model.patchify(out.clean))
        pred = pred * std + mean
    mask = out.mask.unsqueeze(-1)  # [B, L, 1], 1 = masked
    noisy = model.patchify(out.noisy)

    def to_pixels(patches: torch.Tensor) -> torch.Tensor:
        return denormalize(model, model.unpatchify(patches)).clamp(0, 1)

    hidden = model.unpatchify(mask.expand_as(noisy)).bool()
    panels = [
        denormalize(model, out.clean).clamp(0, 1),
        to_pixels(noisy).masked_fill(hidden, MASKED_GRAY),
        to_pixels(noisy * (1 - mask) + pred * mask),
        to_pixels(pred),
    ]
    return torch.stack(panels).cpu()


def reconstruction_figure(
    model: DMAE, imgs: torch.Tensor, stage: str, generator: torch.Generator | None = None
) -> Figure:
    """A 4-row figure, one column per image in ``imgs`` ([k, C, h, w] in [0, 1], native
    resolution): the rows of ``reconstruction_panels``; grayscale for one channel. Its title
    names the training ``stage`` (e.g. pretrain) and the model's sigma and mask ratio."""
    panels = reconstruction_panels(model, imgs, generator)
    rows, k = panels.shape[:2]
    fig = Figure(figsize=(1.6 * k, 1.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, k, squeeze=False)
    for r in range(rows):
        for c in range(k):
            ax = axes[r, c]
            img = panels[r, c].permute(1, 2, 0).numpy()
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(PANELS[r], fontsize=8)
    m = unwrap(model)
    title = f"{stage}: DMAE reconstruction ({sigma_label(m.sigma)}, mask ratio {m.mask_ratio:g})"
    fig.suptitle(title, fontsize=9)
    return fig
