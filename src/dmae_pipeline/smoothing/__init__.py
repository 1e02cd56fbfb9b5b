"""Randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY, certification logs, curves and
reports."""

from dmae_pipeline.smoothing.bounds import lower_confidence_bound
from dmae_pipeline.smoothing.core import NOISE_LAYOUT, Certificate, SequentialItem, Smooth
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
from dmae_pipeline.smoothing.report import (
    curve_table,
    flat_metrics,
    markdown_report,
    metric_histories,
    plot_curves,
    summary_table,
)
from dmae_pipeline.smoothing.sequential import SEQUENTIAL_TEST, SequentialTest

__all__ = [
    "LOG_COLUMNS",
    "NOISE_LAYOUT",
    "SEQUENTIAL_TEST",
    "Certificate",
    "SequentialItem",
    "SequentialTest",
    "Smooth",
    "average_certified_radius",
    "best_over_sigma",
    "certified_accuracy",
    "certify_dataset",
    "curve_table",
    "flat_metrics",
    "image_seed",
    "lower_confidence_bound",
    "markdown_report",
    "merge_logs",
    "metric_histories",
    "plot_curves",
    "read_log",
    "shard_indices",
    "summary_table",
]
