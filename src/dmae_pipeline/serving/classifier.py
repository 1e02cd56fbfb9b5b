"""The smoothed classifier of one finetuned checkpoint as a predictor: images in, one certificate
per image out, each image's noise seeded on its own.

Image ``i`` of a call draws its noise from ``torch.Generator(device).manual_seed(seed + i)`` (mod
2^64, torch's seed range): a call on one image with seed ``s`` answers exactly what
``Smooth(model, num_classes, sigma, seed=s).certify(x, n0, n, alpha, batch_size)`` (or
``certify_sequential``) answers, and a call on k images with seed ``s`` answers what k calls on
one image with seeds s, s + 1, ..., s + k - 1 answer (in sequential mode their noisy samples share
forward batches, ``smoothing.certify_many``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike

from dmae_pipeline.models import load_classifier
from dmae_pipeline.smoothing import CertifySettings, Smooth, certify_items
from dmae_pipeline.smoothing.run import SEEDS

COLUMNS = ["prediction", "radius", "p_a_lower", "n", "sigma", "class_name"]
"""One row per image: the class (-1: abstain), the certified L2 radius in [0, 1] pixel units, the
lower confidence bound on the class's probability under noise, the estimation samples drawn, the
model's sigma and the class's name (empty on abstention)."""

MODES = ("fixed", "sequential")
"""How a request or a run names its CERTIFY: fixed-n (``CertifySettings.radii`` None), or
sequential, settling the certificates at some radii."""


def mode_of(settings: CertifySettings) -> str:
    """The mode (``MODES``) of ``settings``."""
    return "fixed" if settings.radii is None else "sequential"


def with_mode(settings: CertifySettings, mode: str, radii: Sequence[float]) -> CertifySettings:
    """``settings`` in ``mode``: fixed-n CERTIFY, or sequential CERTIFY settling ``radii``."""
    if mode not in MODES:
        raise ValueError(f"mode: expected 'fixed' or 'sequential', got {mode!r}")
    return dataclasses.replace(settings, radii=tuple(radii) if mode == "sequential" else None)


def check_images(images: Any, image_shape: Sequence[int]) -> torch.Tensor:
    """``images`` as a float32 tensor, or a ValueError that says what is wrong: not N x C x H x W
    at ``image_shape`` (C, H, W), not floating point, not finite or outside [0, 1]."""
    image_shape = tuple(image_shape)
    expected = f"N x {' x '.join(map(str, image_shape))} float32 pixels in [0, 1]"
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images: expected {expected}, got dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise ValueError(f"images: expected {expected}, got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != image_shape or not len(images):
        raise ValueError(f"images: expected {expected}, got shape {tuple(images.shape)}")
    images = images.to(torch.float32)
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
        self.model = model.eval().to(self.device)
        self.smooth = Smooth(
            self.model, len(self.class_names), self.sigma, autocast_dtype=autocast_dtype
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
        is wrong (see ``check_images``)."""
        return check_images(images, self.image_shape).to(self.device)

    def certify(self, images: Any, settings: CertifySettings) -> pd.DataFrame:
        """Certify each image (see the module's docstring for the noise); one row per image with
        the columns of ``COLUMNS``."""
        images = self.check_images(images)
        items = (
            (i, x, torch.Generator(self.device).manual_seed((settings.seed + i) % SEEDS))
            for i, x in enumerate(images)
        )
        certificates = dict(certify_items(self.smooth, items, settings))
        ordered = [certificates[i] for i in range(len(images))]
        return answers(
            {
                "prediction": [c.prediction for c in ordered],
                "radius": [c.radius for c in ordered],
                "p_a_lower": [c.p_a_lower for c in ordered],
                "n": [c.n for c in ordered],
            },
            self.sigma,
            self.class_names,
        )


def answers(
    certificates: Mapping[str, ArrayLike], sigma: float, class_names: Sequence[str]
) -> pd.DataFrame:
    """Certificates (``prediction``, ``radius``, ``p_a_lower``, ``n``: one entry per image) as a
    smoothed classifier's rows (``COLUMNS``)."""
    prediction = np.asarray(certificates["prediction"], dtype=np.int64)
    names = np.array([*class_names, ""], dtype=object)  # -1, abstain: ""
    table = {
        "prediction": prediction,
        "radius": np.asarray(certificates["radius"], dtype=np.float64),
        "p_a_lower": np.asarray(certificates["p_a_lower"], dtype=np.float64),
        "n": np.asarray(certificates["n"], dtype=np.int64),
        "sigma": np.full(len(prediction), float(sigma)),
        "class_name": names[prediction],
    }
    return pd.DataFrame(table, columns=COLUMNS)
