"""2-D sin-cos tables (MAE's layout) and their resampling to another patch grid."""

from __future__ import annotations

import math

import pytest
import torch

from dmae_pipeline.models.pos_embed import interpolate_pos_embed, sincos_pos_embed_2d


def test_sincos_layout():
    dim, grid = 16, 3
    table = sincos_pos_embed_2d(dim, grid)
    assert table.shape == (1, 1 + grid * grid, dim) and table.dtype == torch.float32
    assert torch.equal(table[0, 0], torch.zeros(dim))  # the cls row
    for row in range(grid):
        for col in range(grid):
            e = table[0, 1 + row * grid + col]
            # first half: the column (sin then cos, omega_0 = 1); second half: the row
            assert e[0].item() == pytest.approx(math.sin(col), abs=1e-6)
            assert e[dim // 4].item() == pytest.approx(math.cos(col), abs=1e-6)
            assert e[dim // 2].item() == pytest.approx(math.sin(row), abs=1e-6)
            assert e[1].item() == pytest.approx(math.sin(col / 10000 ** (1 / 4)), abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, 2)


def test_interpolation_shapes_identity_and_cls():
    table = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(table, 4) is table  # same grid: exactly the input
    bigger = interpolate_pos_embed(table, 6)
    assert bigger.shape == (1, 1 + 36, 8)
    assert torch.equal(bigger[:, :1], table[:, :1])
    smaller = interpolate_pos_embed(table, 2)
    assert smaller.shape == (1, 1 + 4, 8)
    constant = torch.cat([torch.zeros(1, 1, 8), torch.full((1, 16, 8), 0.3)], dim=1)
    torch.testing.assert_close(
        interpolate_pos_embed(constant, 7)[:, 1:], torch.full((1, 49, 8), 0.3)
    )


def test_interpolation_of_a_smooth_table_follows_the_grid():
    """Resampling the 4x4 sin-cos table to 8x8 lands near the 8x8 table of half-step positions."""
    table = sincos_pos_embed_2d(8, 4)
    upsampled = interpolate_pos_embed(table, 8)[0, 1:].reshape(8, 8, 8)
    # align_corners False: new pixel j sits at old coordinate (j + 0.5) / 2 - 0.5
    j = 3
    old = (j + 0.5) / 2 - 0.5
    assert upsampled[0, j, 0].item() == pytest.approx(math.sin(old), abs=0.05)
    assert upsampled[j, 0, 4].item() == pytest.approx(math.sin(old), abs=0.05)


def test_non_square_table_is_refused():
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.randn(1, 1 + 12, 8), 4)
