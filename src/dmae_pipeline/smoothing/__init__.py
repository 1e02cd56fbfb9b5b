"""Randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY, sequential CERTIFY, certification
logs and certified-accuracy curves."""

from dmae_pipeline.smoothing.bounds import lower_confidence_bound
from dmae_pipeline.smoothing.compiled import CompiledClassifier
from dmae_pipeline.smoothing.core import NOISE_LAYOUT, Certificate, SequentialItem, Smooth
from dmae_pipeline.smoothing.curves import (
    average_certified_radius,
    best_over_sigma,
    certified_accuracy,
)
from dmae_pipeline.smoothing.log import (
    LOG_COLUMNS,
    IncompleteCertificationError,
    certify_dataset,
    image_seed,
    log_files,
    merge_logs,
    merge_shard_logs,
    read_log,
    shard_indices,
)
from dmae_pipeline.smoothing.sequential import SEQUENTIAL_TEST, SequentialTest

__all__ = [
    "LOG_COLUMNS",
    "NOISE_LAYOUT",
    "SEQUENTIAL_TEST",
    "Certificate",
    "CompiledClassifier",
    "IncompleteCertificationError",
    "SequentialItem",
    "SequentialTest",
    "Smooth",
    "average_certified_radius",
    "best_over_sigma",
    "certified_accuracy",
    "certify_dataset",
    "image_seed",
    "log_files",
    "lower_confidence_bound",
    "merge_logs",
    "merge_shard_logs",
    "read_log",
    "shard_indices",
]
