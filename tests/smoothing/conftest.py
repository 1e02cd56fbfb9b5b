"""The toy dataset and smoothed classifier of the log and run tests."""

import pytest
import torch

from dmae_pipeline.smoothing import Smooth

from .certifying import SIGMA
from .toys import LinearModel


@pytest.fixture
def dataset():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (10,), generator=generator)
    return list(zip(images, labels, strict=True))


@pytest.fixture
def smooth():
    return Smooth(LinearModel(16, 3), 3, sigma=SIGMA)
