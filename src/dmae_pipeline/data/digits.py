"""scikit-learn's bundled handwritten digits: 1,797 8x8 grey images of 0-9, no download."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from dmae_pipeline.data.splits import Source

MAX_VALUE = 16  # the bundled images count ink in 0..16
DIGITS_SIZE = 1797


def read_digits(image_size: int) -> Source:
    """All 1,797 digits as one "train" split of uint8 [N, 1, image_size, image_size] images.

    Values 0..16 are scaled to 0..255, then upscaled with antialiased bicubic interpolation.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).to(torch.float32)  # [N, 8, 8] in 0..16
    images = (pixels * (255 / MAX_VALUE)).round().to(torch.uint8).unsqueeze(1)
    if image_size != images.shape[-1]:
        images = F.resize(
            images, [image_size, image_size], InterpolationMode.BICUBIC, antialias=True
        )
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    class_names = [str(name) for name in bunch.target_names]
    return Source(
        splits={"train": {"images": images, "labels": labels}},
        class_names=class_names,
        channels=1,
    )
