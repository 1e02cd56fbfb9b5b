"""Randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY and sequential CERTIFY, of one input
or many at once, certification runs and their logs, certified-accuracy curves."""

from dmae_pipeline.smoothing.bounds import lower_confidence_bound
from dmae_pipeline.smoothing.compiled import CompiledClassifier
from dmae_pipeline.smoothing.core import NOISE_LAYOUT, Certificate, Smooth
from dmae_pipeline.smoothing.curves import (
    average_certified_radius,
    best_over_sigma,
    certified_accuracy,
)
from dmae_pipeline.smoothing.log import (
    LOG_COLUMNS,
    UNLABELLED_LOG_COLUMNS,
    IncompleteCertificationError,
    log_files,
    merge_logs,
    merge_shard_logs,
    read_log,
)
from dmae_pipeline.smoothing.many import SequentialItem, certify_many
from dmae_pipeline.smoothing.run import (
    CertifySettings,
    certify_dataset,
    certify_items,
    fingerprint,
    image_seed,
    shard_indices,
)
from dmae_pipeline.smoothing.sequential import SEQUENTIAL_TEST, SequentialTest

__all__ = [
    "LOG_COLUMNS",
    "NOISE_LAYOUT",
    "SEQUENTIAL_TEST",
    "UNLABELLED_LOG_COLUMNS",
    "Certificate",
    "CertifySettings",
    "CompiledClassifier",
    "IncompleteCertificationError",
    "SequentialItem",
    "SequentialTest",
    "Smooth",
    "average_certified_radius",
    "best_over_sigma",
    "certified_accuracy",
    "certify_dataset",
    "certify_items",
    "certify_many",
    "fingerprint",
    "image_seed",
    "log_files",
    "lower_confidence_bound",
    "merge_logs",
    "merge_shard_logs",
    "read_log",
    "shard_indices",
]
