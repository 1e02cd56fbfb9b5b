"""Nodes of the report pipeline; the tables, metrics and plot come from
``dmae_pipeline.reporting``."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from dmae_pipeline.params import ReportParams
from dmae_pipeline.reporting import certification as tables


def _points(report: ReportParams) -> list[dict[str, Any]]:
    return [point.model_dump() for point in report.reference_points]


def _intervals(report: ReportParams) -> dict[str, Any]:
    return {
        "confidence": report.confidence,
        "resamples": report.bootstrap,
        "seed": report.bootstrap_seed,
    }


def tabulate_certified_accuracy(
    certification_results: pd.DataFrame, report: ReportParams
) -> pd.DataFrame:
    """Certified accuracy per sigma at each radius and best over sigma, ACR, abstain rate and
    clean accuracy, with the intervals over the test images."""
    return tables.summary_table(certification_results, report.radii, **_intervals(report))


def tabulate_certified_accuracy_curves(
    certification_results: pd.DataFrame, report: ReportParams
) -> pd.DataFrame:
    """Every sigma's curve and the envelope on a fine radius grid (long format), with bands."""
    return tables.curve_table(
        certification_results,
        max(report.radii),
        report.curve_step,
        confidence=report.confidence,
    )


def write_markdown_report(certified_accuracy_table: pd.DataFrame, report: ReportParams) -> str:
    return tables.markdown_report(
        certified_accuracy_table, report.dataset, _points(report), **_intervals(report)
    )


def collect_certification_metrics(
    certified_accuracy_table: pd.DataFrame,
    certified_accuracy_curve: pd.DataFrame,
    report: ReportParams,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """The whole table as flat metrics, its summary at ``report.summary_radii`` for DVC, and the
    table's numbers plus every curve as MLflow metric histories (under ``report/``)."""
    return (
        tables.flat_metrics(certified_accuracy_table),
        tables.summary_metrics(certified_accuracy_table, report.summary_radii),
        tables.metric_histories(certified_accuracy_table, certified_accuracy_curve),
    )


def plot_certified_accuracy(certified_accuracy_curve: pd.DataFrame, report: ReportParams) -> Figure:
    return tables.plot_curves(
        certified_accuracy_curve, report.dataset, _points(report), confidence=report.confidence
    )
