"""The smoothed classifier of one finetuned checkpoint as a predictor: images in, one certificate
per image out, each image's noise seeded on its own.

Image ``i`` of a call draws its noise from ``torch.Generator(device).manual_seed(seed + i)`` (mod
2^64, torch's seed range): a
call on one image with seed ``s`` answers exactly what ``Smooth(model, num_classes, sigma,
seed=s).certify(x, n0, n, alpha, batch_size)`` (or ``certify_sequential``) answers, and a call on
k images with seed ``s`` answers what k calls on one image with seeds s, s + 1, ..., s + k - 1
answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from dmae_pipeline.models import load_classifier
from dmae_pipeline.smoothing import Smooth

COLUMNS = ["prediction", "radius", "p_a_lower", "n", "sigma", "class_name"]
"""One row per image: the class (-1: abstain), the certified L2 radius in [0, 1] pixel units, the
lower confidence bound on the class's probability under noise, the estimation samples drawn, the
model's sigma and the class's name (empty on abstention)."""

SEEDS = 2**64  # torch's generator seeds: 0 .. 2^64 - 1


@dataclass(frozen=True)
class CertifySettings:
    """How each image is certified: Cohen et al.'s CERTIFY with ``n`` estimation samples
    (``mode="fixed"``), or sequential CERTIFY with at most ``n``, settling the certificates at
    ``radii`` (``mode="sequential"``); ``seed`` seeds the first image's noise."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    mode: Literal["fixed", "sequential"] = "fixed"
    radii: tuple[float, ...] = field(default=())
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n0", "n", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.alpha, int | float) or not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a number in (0, 1), got {self.alpha!r}")
        if self.mode not in ("fixed", "sequential"):
            raise ValueError(f"mode: expected 'fixed' or 'sequential', got {self.mode!r}")
        radii = tuple(self.radii)
        if not all(isinstance(r, int | float) and math.isfinite(r) and r >= 0 for r in radii):
            raise ValueError(f"radii: expected non-negative numbers, got {list(radii)}")
        if self.mode == "sequential" and not radii:
            raise ValueError("radii: sequential mode needs at least one radius to settle")
        object.__setattr__(self, "radii", radii)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        if seed >= SEEDS:
            raise ValueError(f"seed: expected at most {SEEDS - 1}, got {seed}")


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + eps) = c) of a finetuned classifier f, certified image by image.

    :param model: the base classifier, taking [0, 1] pixel images at ``image_shape``
    :param sigma: the noise level the classifier was finetuned for, in [0, 1] pixel units
    :param image_shape: (channels, height, width) of the inputs: the dataset's native resolution
    :param class_names: one name per class
    :param device: where the model runs and the noise is drawn
    :param autocast_dtype: run the model under autocast with this dtype (None: float32)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sigma: float,
        image_shape: Sequence[int],
        class_names: Sequence[str],
        *,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.device = torch.device(device)
        self.sigma = float(sigma)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.class_names = list(class_names)
        model = model.eval().to(self.device)
        self.smooth = Smooth(
            model, len(self.class_names), self.sigma, autocast_dtype=autocast_dtype
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], dataset_spec: Mapping[str, Any], **kwargs: Any
    ) -> SmoothedClassifier:
        """From a finetuned checkpoint {"model", "config", "sigma"} and the dataset spec
        (``image_size``, ``channels``, ``class_names``); ``kwargs``: ``device``,
        ``autocast_dtype``."""
        model = load_classifier(
            checkpoint,
            "the finetuned checkpoint",
            num_classes=len(dataset_spec["class_names"]),
            in_chans=dataset_spec["channels"],
        )
        size = dataset_spec["image_size"]
        shape = (dataset_spec["channels"], size, size)
        return cls(model, checkpoint["sigma"], shape, dataset_spec["class_names"], **kwargs)

    def check_images(self, images: Any) -> torch.Tensor:
        """``images`` as a float32 tensor on the model's device, or a ValueError that says what
        is wrong: not N x C x H x W at the native resolution, not floating point, not finite or
        outside [0, 1]."""
        expected = f"N x {' x '.join(map(str, self.image_shape))} float32 pixels in [0, 1]"
        if isinstance(images, np.ndarray):
            if not np.issubdtype(images.dtype, np.floating):
                raise ValueError(f"images: expected {expected}, got dtype {images.dtype}")
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise ValueError(f"images: expected {expected}, got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape or not len(images):
            raise ValueError(f"images: expected {expected}, got shape {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        if not finite.all():
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"images: NaN or infinite pixels in image(s) {bad[:10]}")
        inside = ((images >= 0) & (images <= 1)).flatten(1).all(dim=1)
        if not inside.all():
            bad = torch.nonzero(~inside).flatten().tolist()
            low, high = images.min().item(), images.max().item()
            raise ValueError(
                f"images: pixels must be in [0, 1], got values in [{low:g}, {high:g}] in "
                f"image(s) {bad[:10]}"
            )
        return images

    def certify(self, images: Any, settings: CertifySettings) -> pd.DataFrame:
        """Certify each image (see the module's docstring for the noise); one row per image with
        the columns of ``COLUMNS``."""
        images = self.check_images(images)
        rows = []
        for i, x in enumerate(images):
            generator = torch.Generator(device=self.device).manual_seed((settings.seed + i) % SEEDS)
            if settings.mode == "fixed":
                certificate = self.smooth.certify_detailed(
                    x, settings.n0, settings.n, settings.alpha, settings.batch_size, generator
                )
            else:
                certificate = self.smooth.certify_sequential(
                    x,
                    settings.n0,
                    settings.n,
                    settings.alpha,
                    settings.batch_size,
                    settings.radii,
                    generator,
                )
            prediction = certificate.prediction
            rows.append(
                {
                    "prediction": prediction,
                    "radius": certificate.radius,
                    "p_a_lower": certificate.p_a_lower,
                    "n": certificate.n,
                    "sigma": self.sigma,
                    "class_name": "" if prediction < 0 else self.class_names[prediction],
                }
            )
        return pd.DataFrame(rows, columns=COLUMNS)
