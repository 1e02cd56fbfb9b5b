"""Accuracy under Gaussian noise, the finetuning model-selection metric."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dmae_pipeline.training import accuracy_evaluator, noisy_accuracy


class MeanThreshold(nn.Module):
    """Class 1 when the mean pixel is above 0.5, else class 0; records its mode per call."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        score = x.mean(dim=(1, 2, 3)) - 0.5 + self.offset
        return torch.stack([-score, score], dim=1)


def two_level_images(n: int, d: float) -> TensorDataset:
    """n images of 2x2 pixels, all at 0.5 - d (label 0) or 0.5 + d (label 1)."""
    labels = torch.arange(n) % 2
    images = (0.5 + d * (2 * labels - 1).float()).reshape(n, 1, 1, 1).expand(n, 1, 2, 2)
    return TensorDataset(images.contiguous(), labels)


def test_noisy_accuracy_matches_the_gaussian_tail():
    # The mean of 4 pixels carries noise N(0, sigma^2 / 4): P(correct) = Phi(d / (sigma / 2)).
    n, d, sigma = 4000, 0.1, 0.25
    evaluate = accuracy_evaluator(two_level_images(n, d), sigma=sigma, batch_size=512, seed=0)
    metrics = evaluate(MeanThreshold())
    expected = 0.5 * (1 + math.erf(d / (sigma / 2) / math.sqrt(2)))  # 0.788
    standard_error = math.sqrt(expected * (1 - expected) / n)
    assert metrics["clean_acc"] == 1.0
    assert abs(metrics["noisy_acc"] - expected) < 4 * standard_error


def test_same_noise_every_call_and_the_model_mode_kept():
    model = MeanThreshold().train()
    evaluate = accuracy_evaluator(
        two_level_images(300, 0.05), sigma=0.5, batch_size=64, seed=3, prefix="val_"
    )
    first = evaluate(model)
    assert set(first) == {"val_clean_acc", "val_noisy_acc"}
    assert 0.5 < first["val_noisy_acc"] < 1.0
    assert evaluate(model) == first
    assert model.training and not any(model.modes)  # scored in eval mode, then restored
    assert model.offset.grad is None


def test_no_noise_scores_the_clean_images():
    data = two_level_images(10, 0.2)
    model = MeanThreshold()
    with torch.no_grad():
        model.offset.fill_(-0.3)  # now every image is called class 0: half are right
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    assert noisy_accuracy(model, loader, sigma=0.0, seed=0) == {
        "clean_acc": 0.5,
        "noisy_acc": 0.5,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": -0.1}, "sigma: expected a number >= 0"),
        ({"batch_size": 0}, "batch_size: expected an integer >= 1"),
        ({"seed": -1}, "seed: expected an integer >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"sigma": 0.25, "batch_size": 8, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        accuracy_evaluator(two_level_images(4, 0.1), **args)
    with pytest.raises(ValueError, match="empty"):
        accuracy_evaluator(two_level_images(0, 0.1), sigma=0.25, batch_size=8, seed=0)
