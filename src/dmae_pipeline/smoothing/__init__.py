"""Randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY, certification logs and
certified-accuracy curves."""

from dmae_pipeline.smoothing.bounds import lower_confidence_bound
from dmae_pipeline.smoothing.core import Certificate, Smooth
from dmae_pipeline.smoothing.curves import (
    average_certified_radius,
    best_over_sigma,
    certified_accuracy,
)
from dmae_pipeline.smoothing.log import (
    LOG_COLUMNS,
    certify_dataset,
    image_seed,
    merge_logs,
    read_log,
    shard_indices,
)

__all__ = [
    "LOG_COLUMNS",
    "Certificate",
    "Smooth",
    "average_certified_radius",
    "best_over_sigma",
    "certified_accuracy",
    "certify_dataset",
    "image_seed",
    "lower_confidence_bound",
    "merge_logs",
    "read_log",
    "shard_indices",
]
