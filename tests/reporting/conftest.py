"""Tiny model settings shared by the figure tests: 16x16 inputs, 4x4 patches (a 4x4 grid)."""

from __future__ import annotations

import pytest

TINY_ENCODER = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
TINY_DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture
def tiny_encoder() -> dict:
    return dict(TINY_ENCODER)


@pytest.fixture
def tiny() -> dict:
    """build_dmae("tiny", **tiny) arguments."""
    return {**TINY_ENCODER, **TINY_DECODER}
