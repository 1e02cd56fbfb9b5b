"""Nodes of the compare pipeline; the tables, gaps and plot come from
``dmae_pipeline.reporting.comparison``.

Each run of the comparison (one variant, one seed: ``kedro run --env=compare
--params=compare.variant=V,compare.seed=S``) writes its certification results to
``<variant>/seed_<seed>/certification_results.csv``; these nodes read those of every configured
variant and seed.

``compare`` is null outside conf/compare, hence ``CompareParams | None`` (kedro viz validates the
blocks of every registered pipeline); a run there stops before its first node anyway, since only
conf/compare's catalog has ``run_certification_results``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from dmae_pipeline.io import UserError
from dmae_pipeline.params import SCRATCH, CompareParams, ReportParams
from dmae_pipeline.reporting import comparison


def collect_runs(
    run_certification_results: Mapping[str, Callable[[], pd.DataFrame]],
    compare: CompareParams | None,
) -> pd.DataFrame:
    """Every configured run's certification results in one table, with ``variant`` and ``seed``
    columns; refuses, naming the commands that make them, while any run's results are missing."""
    runs = {(v, s): f"{v}/seed_{s}" for v in compare.variants for s in compare.seeds}
    missing = [key for key, name in runs.items() if name not in run_certification_results]
    if missing:
        commands = "\n".join(
            f"  kedro run --env=compare --pipelines={_pipelines(compare, v)} "
            f"--params=compare.variant={v},compare.seed={s}"
            for v, s in missing
        )
        raise UserError(
            f"the comparison lacks the certification results of {len(missing)} of its "
            f"{len(runs)} runs; run them with\n{commands}"
        )
    tables = [
        run_certification_results[name]().assign(variant=v, seed=s) for (v, s), name in runs.items()
    ]
    return pd.concat(tables, ignore_index=True)


def _pipelines(compare: CompareParams, variant: str) -> str:
    stages = "finetune,certify,report"
    return stages if compare.variants[variant].init == SCRATCH else f"pretrain,{stages}"


def tabulate_comparison(
    comparison_results: pd.DataFrame, compare: CompareParams | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each variant's certified accuracy over its seeds with its interval over the test images,
    and the bootstrapped gaps."""
    table = comparison.summary_table(
        comparison_results, compare.radii, confidence=compare.confidence
    )
    gaps = comparison.paired_bootstrap(
        comparison_results,
        compare.gaps,
        compare.radii,
        compare.bootstrap,
        compare.confidence,
        compare.bootstrap_seed,
    )
    return table, gaps


def write_comparison_markdown(
    comparison_table: pd.DataFrame, comparison_gaps: pd.DataFrame, compare: CompareParams | None
) -> str:
    return comparison.markdown_report(comparison_table, comparison_gaps, compare.confidence)


def collect_comparison_metrics(
    comparison_table: pd.DataFrame, comparison_gaps: pd.DataFrame
) -> dict[str, Any]:
    """The table's and the gaps' numbers as MLflow metrics (step 0)."""
    return {
        name: {"value": value, "step": 0}
        for name, value in comparison.metrics(comparison_table, comparison_gaps).items()
    }


def plot_comparison(
    comparison_results: pd.DataFrame, compare: CompareParams | None, report: ReportParams
) -> Figure:
    return comparison.plot_comparison(comparison_results, max(compare.radii), report.dataset)
