"""Toy base classifiers whose behaviour under noise is known exactly."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm
from torch import nn


class BernoulliModel(nn.Module):
    """Class 0 with probability ``p_a`` under N(0, sigma^2) noise around ``center``, else class 1.

    Reads the noise back from its input, so its answers are driven by the smoothing generator.
    """

    def __init__(self, p_a: float, center: float, sigma: float):
        super().__init__()
        self.center, self.sigma = center, sigma
        self.threshold = float(norm.ppf(p_a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1)[:, 0] - self.center) / self.sigma
        top = z < self.threshold
        return torch.stack((top, ~top), dim=1).float()


class ConstantModel(nn.Module):
    """Always predicts ``cls``."""

    def __init__(self, num_classes: int, cls: int):
        super().__init__()
        self.num_classes, self.cls = num_classes, cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes, device=x.device)
        logits[:, self.cls] = 1.0
        return logits


class LinearModel(nn.Module):
    """A fixed random linear classifier on flattened images."""

    def __init__(self, in_features: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Recorder(nn.Module):
    """Wraps a model and keeps every input batch, its dtype and whether autocast was on."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []
        self.autocast: list[bool] = []
        self.output_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        self.autocast.append(torch.is_autocast_enabled(x.device.type))
        out = self.inner(x)
        self.output_dtypes.append(out.dtype)
        return out

    def seen(self) -> torch.Tensor:
        return torch.cat(self.inputs)


class CategoricalModel(nn.Module):
    """Class c with probability ``probs[c]`` under N(0, sigma^2) noise around ``center``.

    Reads the noise back from its input's first pixel, as ``BernoulliModel`` does.
    """

    def __init__(self, probs, center: float, sigma: float):
        super().__init__()
        self.center, self.sigma, self.num_classes = center, sigma, len(probs)
        cuts = norm.ppf(np.cumsum(probs)[:-1])
        self.register_buffer("cuts", torch.tensor(cuts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1)[:, :1] - self.center) / self.sigma
        return nn.functional.one_hot((z >= self.cuts).sum(1), self.num_classes).float()


class GroupMaxModel(nn.Module):
    """Logit c is the largest pixel of the c-th of ``num_classes`` equal groups of the flattened
    input: every pixel counts, and the max is exact, so a sample's class never depends on the
    batch it is evaluated in."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).unflatten(1, (self.num_classes, -1)).amax(dim=2)
