"""The smoothed classifier as an MLflow pyfunc model: what ``mlflow.pyfunc.load_model(uri)`` and
``mlflow models serve`` run.

``model_code.py`` hands MLflow a ``SmoothedClassifierModel`` (models from code); ``load_context``
builds the ``SmoothedClassifier`` from the model's artifacts, the finetuned weights and the
settings (dataset, sigma, certification defaults, limits, device), both written by
``publish.log_smoothed_classifier``. A request's parameters override the defaults (its ``mode`` and
``radii`` make the settings' ``radii``: None for fixed-n CERTIFY); every problem
with a request (its images, its parameters, a limit) is an ``MlflowException`` with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.serving.classifier import SmoothedClassifier, mode_of, with_mode
from dmae_pipeline.smoothing import CertifySettings
from dmae_pipeline.training import autocast_dtype, resolve_device

CLASSIFIER_ARTIFACT = "classifier"
"""The artifact key of the finetuned checkpoint {"model", "config", "sigma"}."""
SETTINGS_ARTIFACT = "settings"
"""The artifact key of the JSON settings: dataset, sigma, certify (the defaults), radii (those of a
sequential request), limits, device, amp."""

PARAMS = ("n", "n0", "alpha", "mode", "radii", "seed")
"""The parameters a request may give: settings of ``CertifySettings`` (the rest are the model's),
and the mode (``MODES``) with the radii that sequential CERTIFY settles."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for: at most ``max_images`` images, and at most ``max_n``
    noisy samples per image for selection (n0) and for estimation (n) each."""

    max_n: int
    max_images: int

    def check(self, settings: CertifySettings, num_images: int) -> None:
        for name in ("n0", "n"):
            value = getattr(settings, name)
            if value > self.max_n:
                raise ValueError(f"{name}={value} exceeds this model's limit max_n={self.max_n}")
        if num_images > self.max_images:
            raise ValueError(
                f"{num_images} images exceed this model's limit max_images={self.max_images} "
                "per request"
            )


def request_settings(
    defaults: CertifySettings, radii: Sequence[float], params: Mapping[str, Any] | None
) -> CertifySettings:
    """The defaults with a request's parameters (those of ``PARAMS``) in their place: its mode
    (by default the defaults'), sequential with its radii (by default ``radii``)."""
    given = {k: v for k, v in (params or {}).items() if k in PARAMS}
    mode, radii = given.pop("mode", mode_of(defaults)), given.pop("radii", radii)
    return with_mode(dataclasses.replace(defaults, **given), mode, radii)


class SmoothedClassifierModel(mlflow.pyfunc.PythonModel):
    """Images N x C x H x W (float32, [0, 1], the dataset's native resolution) -> one row per
    image: ``prediction``, ``radius``, ``p_a_lower``, ``n``, ``sigma``, ``class_name``.

    Requests are certified one at a time (the scoring server runs them in threads): each gets the
    whole CPU or GPU, and the memory in use stays that of one request.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = json.loads(Path(context.artifacts[SETTINGS_ARTIFACT]).read_text())
        device = resolve_device(config["device"])
        checkpoint = safe_torch_load(context.artifacts[CLASSIFIER_ARTIFACT])
        self.classifier = SmoothedClassifier.from_checkpoint(
            checkpoint,
            config["dataset"],
            device=device,
            autocast_dtype=autocast_dtype(config["amp"], device),
        )
        self.defaults = CertifySettings(**config["certify"])
        self.radii = tuple(config["radii"])
        self.limits = Limits(**config["limits"])
        self._lock = threading.Lock()

    def predict(
        self, context, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        try:
            settings = request_settings(self.defaults, self.radii, params)
            images = self.classifier.check_images(model_input)
            self.limits.check(settings, len(images))
        except ValueError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None
        with self._lock:
            return self.classifier.certify(images, settings)
