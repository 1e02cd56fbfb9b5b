"""The smoothed classifier as a deployable model: certify images with a finetuned classifier
(``SmoothedClassifier``), and the same as an MLflow pyfunc model, logged and registered per sigma
(``log_smoothed_classifier``) and served by ``mlflow models serve`` (torch + MLflow, no Kedro);
the images of a folder or an array file for batch prediction (``batch``)."""

from dmae_pipeline.serving.classifier import (
    COLUMNS,
    MODES,
    SmoothedClassifier,
    answers,
    check_images,
    mode_of,
    with_mode,
)
from dmae_pipeline.serving.publish import log_smoothed_classifier, registry_name
from dmae_pipeline.serving.pyfunc import Limits, SmoothedClassifierModel

__all__ = [
    "COLUMNS",
    "MODES",
    "Limits",
    "SmoothedClassifier",
    "SmoothedClassifierModel",
    "answers",
    "check_images",
    "log_smoothed_classifier",
    "mode_of",
    "registry_name",
    "with_mode",
]
