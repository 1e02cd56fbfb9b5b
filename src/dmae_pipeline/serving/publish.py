"""Log a finetuned classifier as a smoothed-classifier pyfunc model, and register it.

The logged model holds everything it needs: the finetuned weights and model config (artifact
``classifier``), the dataset's resolution, channels, pixel statistics and class names, sigma,
the certification defaults and the radii of a sequential request, the per-request limits and
the device (artifact ``settings``, a JSON file), a tensor signature with the inference
parameters, an input example, and this package's code (``code_paths``), so that
``mlflow.pyfunc.load_model(uri)`` works in any Python with the pinned requirements installed,
without this project or Kedro.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

import dmae_pipeline
from dmae_pipeline.io import atomic_torch_save
from dmae_pipeline.serving.classifier import SmoothedClassifier, mode_of, with_mode
from dmae_pipeline.serving.pyfunc import CLASSIFIER_ARTIFACT, SETTINGS_ARTIFACT, Limits
from dmae_pipeline.smoothing import CertifySettings

MODEL_CODE = Path(__file__).with_name("model_code.py")
REQUIREMENTS = ("mlflow", "torch", "timm", "numpy", "scipy", "pandas", "tqdm")
"""What loading and running the model imports, pinned at the versions it was logged with."""

EXAMPLE_N = 100
"""The input example's n (at most): MLflow runs the example when it logs the model."""

OUTPUT_SCHEMA = Schema(
    [
        ColSpec("long", "prediction"),
        ColSpec("double", "radius"),
        ColSpec("double", "p_a_lower"),
        ColSpec("long", "n"),
        ColSpec("double", "sigma"),
        ColSpec("string", "class_name"),
    ]
)


def registry_name(dataset: str, sigma_label: str) -> str:
    """The registry name of a dataset's smoothed classifier: "dmae_digits_sigma_0.25"."""
    return re.sub(r"[^\w.-]+", "_", f"dmae_{dataset}_{sigma_label}")


def signature(
    image_shape: tuple[int, ...], defaults: CertifySettings, radii: Sequence[float]
) -> ModelSignature:
    """N x C x H x W float32 in; one row per image out; the request parameters, with the
    defaults as theirs (``radii``: those of a sequential request)."""
    params = [
        ParamSpec("n", "long", defaults.n),
        ParamSpec("n0", "long", defaults.n0),
        ParamSpec("alpha", "double", defaults.alpha),
        ParamSpec("mode", "string", mode_of(defaults)),
        ParamSpec("radii", "double", list(radii), shape=(-1,)),
        ParamSpec("seed", "long", defaults.seed),
    ]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape))]),
        outputs=OUTPUT_SCHEMA,
        params=ParamSchema(params),
    )


def log_smoothed_classifier(
    checkpoint: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    defaults: CertifySettings,
    limits: Limits,
    example: np.ndarray,
    *,
    radii: Sequence[float] | None = None,
    name: str,
    registered_model_name: str | None = None,
    device: str = "auto",
    amp: str = "auto",
) -> ModelInfo:
    """Log the smoothed classifier of ``checkpoint`` into the active MLflow run (one is started
    if none is active) as the model ``name``, and register it as a new version of
    ``registered_model_name`` if given.

    :param checkpoint: a finetuned checkpoint {"model", "config", "sigma", ...}
    :param dataset_spec: the dataset it was finetuned on (``name``, ``image_size``, ``channels``,
                         ``mean``, ``std``, ``class_names``)
    :param defaults: the certification settings of a request that gives no parameters
    :param radii: the radii a sequential request settles unless it names its own (None: those of
                  sequential ``defaults``; none for fixed ones, where such a request must name
                  them)
    :param limits: what one request may ask for
    :param example: one or a few images, 1 x C x H x W float32 in [0, 1], for the input example
    :param device: where the served model runs: auto (CUDA when available), cpu, cuda, cuda:N
    :param amp: autocast precision: auto (bf16 on CUDA, off on the CPU), bf16, fp16 or off
    """
    classifier = SmoothedClassifier.from_checkpoint(checkpoint, dataset_spec)  # checks it
    example = classifier.check_images(example).cpu().numpy()
    limits.check(defaults, len(example))
    radii = list(defaults.radii or ()) if radii is None else list(radii)
    if radii:
        with_mode(defaults, "sequential", radii)  # checks them
    config = {
        "dataset": {
            key: dataset_spec[key]
            for key in ("name", "image_size", "channels", "mean", "std", "class_names")
        },
        "sigma": classifier.sigma,
        "certify": dataclasses.asdict(defaults),
        "radii": radii,
        "limits": dataclasses.asdict(limits),
        "device": device,
        "amp": amp,
    }
    example_params = {"n": min(defaults.n, EXAMPLE_N)}
    with tempfile.TemporaryDirectory() as tmp:
        weights, settings = Path(tmp) / "classifier.pt", Path(tmp) / "settings.json"
        atomic_torch_save({k: checkpoint[k] for k in ("model", "config", "sigma")}, weights)
        settings.write_text(json.dumps(config, indent=2))
        code = Path(tmp) / "code" / "dmae_pipeline"
        shutil.copytree(
            Path(dmae_pipeline.__file__).parent,
            code,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={CLASSIFIER_ARTIFACT: str(weights), SETTINGS_ARTIFACT: str(settings)},
            code_paths=[str(code)],
            signature=signature(classifier.image_shape, defaults, radii),
            input_example=(example, example_params),
            pip_requirements=[f"{dist}=={version(dist)}" for dist in REQUIREMENTS],
            registered_model_name=registered_model_name,
        )
