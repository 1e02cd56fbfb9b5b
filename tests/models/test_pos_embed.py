"""2-D sin-cos tables (MAE's layout) and the grid a table covers."""

from __future__ import annotations

import math

import pytest
import torch

from dmae_pipeline.models.pos_embed import grid_size_of, sincos_pos_embed_2d


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


def test_grid_size_of_a_table():
    assert grid_size_of(sincos_pos_embed_2d(8, 5)) == 5
    assert grid_size_of(torch.zeros(1, 9, 8), num_prefix_tokens=0) == 3
    for shape in [(1, 1 + 12, 8), (1, 1, 8), (1 + 16, 8)]:
        with pytest.raises(ValueError, match="square"):
            grid_size_of(torch.zeros(shape))
