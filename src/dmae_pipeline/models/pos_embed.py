"""Fixed 2-D sin-cos position embeddings (MAE's layout) and the grid size of a table."""

from __future__ import annotations

import math

import torch


def _sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """[1, (1 +) grid_size**2, embed_dim] float32 sin-cos table, a zero row first for the cls token.

    Same values and layout as MAE's ``get_2d_sincos_pos_embed`` (and so the released checkpoints):
    the first half of the channels encodes the patch column, the second half its row, patches in
    row-major order.
    """
    if embed_dim % 4:
        raise ValueError(
            f"embed_dim={embed_dim} must be divisible by 4 for a 2-D sin-cos embedding"
        )
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def grid_size_of(pos_embed: torch.Tensor, num_prefix_tokens: int = 1) -> int:
    """Side of the square patch grid a [1, prefix + side**2, D] position table covers."""
    n = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(max(n, 0))
    if pos_embed.ndim != 3 or side * side != n or n == 0:
        raise ValueError(
            f"position embedding of shape {tuple(pos_embed.shape)} is not [1, {num_prefix_tokens}"
            " + side**2, dim] for a square patch grid"
        )
    return side
