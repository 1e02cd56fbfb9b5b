"""The DMAE reconstruction figure (matplotlib, no pyplot state)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from dmae_pipeline.models import DMAE
from dmae_pipeline.models.checkpoint import unwrap
from dmae_pipeline.models.reconstruction import PANELS, reconstruction_panels


def reconstruction_figure(
    model: DMAE, imgs: torch.Tensor, generator: torch.Generator | None = None
) -> Figure:
    """A 4-row figure, one column per image in ``imgs`` ([k, C, h, w] in [0, 1], native
    resolution): the rows of ``reconstruction_panels``; grayscale for one channel."""
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
    fig.suptitle(
        f"DMAE reconstruction (sigma={m.sigma:g}, mask ratio={m.mask_ratio:g})", fontsize=9
    )
    return fig
