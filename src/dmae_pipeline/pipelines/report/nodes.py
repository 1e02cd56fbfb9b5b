"""Nodes of the report pipeline; the tables, metrics and plot come from
``dmae_pipeline.reporting``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from dmae_pipeline.reporting import certification as tables

KEYS = ("dataset", "radii", "curve_step", "reference_points")
REFERENCE_KEYS = {"label", "radii", "certified_accuracy"}


@dataclass(frozen=True)
class ReportConfig:
    """The ``report`` parameters, checked. Build it with :meth:`from_params`."""

    dataset: str
    radii: tuple[float, ...]
    curve_step: float
    reference_points: tuple[dict[str, Any], ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "report") -> ReportConfig:
        """Check every parameter; errors name ``<prefix>.<parameter>``."""
        if not isinstance(params, Mapping) or set(params) != set(KEYS):
            got = sorted(params) if isinstance(params, Mapping) else params
            raise ValueError(f"{prefix} must have exactly the parameters {list(KEYS)}, got {got}")
        if not isinstance(params["dataset"], str) or not params["dataset"]:
            raise ValueError(
                f"{prefix}.dataset must be a non-empty label, got {params['dataset']!r}"
            )
        radii = _numbers(params["radii"])
        if not radii or radii[0] < 0 or any(a >= b for a, b in itertools.pairwise(radii)):
            raise ValueError(
                f"{prefix}.radii must be a non-empty increasing list of radii >= 0, "
                f"got {params['radii']!r}"
            )
        tables.grid_units(params["curve_step"], f"{prefix}.curve_step")
        points = params["reference_points"]
        if not isinstance(points, list | tuple):
            raise ValueError(f"{prefix}.reference_points must be a list, got {points!r}")
        checked = []
        for i, point in enumerate(points):
            where = f"{prefix}.reference_points[{i}]"
            if not isinstance(point, Mapping) or set(point) != REFERENCE_KEYS:
                raise ValueError(
                    f"{where} must have exactly the keys {sorted(REFERENCE_KEYS)}, got {point!r}"
                )
            x, y = _numbers(point["radii"]), _numbers(point["certified_accuracy"])
            if not x or len(x) != len(y) or min(x) < 0 or not all(0 <= a <= 1 for a in y):
                raise ValueError(
                    f"{where} must pair radii >= 0 with certified accuracies in [0, 1] "
                    f"(fractions, not percentages), one each; got {point!r}"
                )
            checked.append({"label": str(point["label"]), "radii": x, "certified_accuracy": y})
        return cls(params["dataset"], tuple(radii), float(params["curve_step"]), tuple(checked))


def _numbers(values: Any) -> list[float]:
    """``values`` as floats, or [] if it is not a list of numbers."""
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        return []
    return [float(v) for v in values]


def tabulate_certified_accuracy(certification_results: pd.DataFrame, report: dict) -> pd.DataFrame:
    """Certified accuracy per sigma at each radius and best over sigma, ACR, abstain rate and
    clean accuracy."""
    return tables.summary_table(certification_results, ReportConfig.from_params(report).radii)


def tabulate_certified_accuracy_curves(
    certification_results: pd.DataFrame, report: dict
) -> pd.DataFrame:
    """Every sigma's curve and the envelope on a fine radius grid (long format)."""
    cfg = ReportConfig.from_params(report)
    return tables.curve_table(certification_results, max(cfg.radii), cfg.curve_step)


def write_markdown_report(certified_accuracy_table: pd.DataFrame, report: dict) -> str:
    cfg = ReportConfig.from_params(report)
    return tables.markdown_report(certified_accuracy_table, cfg.dataset, cfg.reference_points)


def collect_certification_metrics(
    certified_accuracy_table: pd.DataFrame, certified_accuracy_curve: pd.DataFrame
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat metrics for DVC, and the same numbers plus every curve as MLflow metric histories."""
    return (
        tables.flat_metrics(certified_accuracy_table),
        tables.metric_histories(certified_accuracy_table, certified_accuracy_curve),
    )


def plot_certified_accuracy(certified_accuracy_curve: pd.DataFrame, report: dict) -> Figure:
    cfg = ReportConfig.from_params(report)
    return tables.plot_curves(certified_accuracy_curve, cfg.dataset, cfg.reference_points)
