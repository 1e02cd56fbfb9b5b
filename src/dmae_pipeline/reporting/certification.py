"""Certification reports: summary tables, certified-accuracy curves, metrics and the plot.

Everything starts from a certification table: one row per (sigma, image), with at least the
columns ``sigma idx predict radius correct`` of the per-image logs. With their ``estimation``
column, the reports tell fixed-n from sequential CERTIFY: a sequential run's reports show the
samples spent per image (from ``n`` and ``n_max``) and the images skipped at selection apart from
the abstentions. Accuracies are fractions in [0, 1] everywhere except the Markdown table, which
shows percentages as the papers do.

Every certified accuracy comes with its Clopper-Pearson interval over the test images, and every
ACR with a bootstrap (BCa) interval over them: they cover the choice of test images (each
with its certification noise) for this trained model and these certification settings, not a
retraining. The best-over-sigma figure picks its sigma on the same images, so its interval, that
of the chosen sigma, leaves the choice out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import ArrayLike
from scipy import stats

from dmae_pipeline.reporting.names import BEST, RADIUS_UNIT, curve_name, format_value, grid_units
from dmae_pipeline.smoothing import (
    Smooth,
    average_certified_radius,
    best_over_sigma,
    certified_accuracy,
)
from dmae_pipeline.smoothing.log import FIXED, SKIPPED

REQUIRED_COLUMNS = ("sigma", "idx", "predict", "radius", "correct")
PER_SIGMA_COLUMNS = (
    "clean_accuracy", "abstain_rate", "skip_rate", "acr", "mean_samples", "median_samples",
    "saving",
)  # fmt: skip
CI = ("ci_low", "ci_high")
"""The ends of an interval: ``<column>_ci_low`` in tables, ``<metric>/ci_low`` in metrics."""
BOOTSTRAP_BATCH = 100
"""Bootstrap resamples drawn at once (memory: this many times the images)."""


def radius_column(radius: float) -> str:
    return f"r_{format_value(radius)}"


def ci_columns(column: str) -> list[str]:
    """The columns of ``column``'s interval: ``r_0.50`` -> ``r_0.50_ci_low``, ``r_0.50_ci_high``."""
    return [f"{column}_{end}" for end in CI]


def radius_columns(table: pd.DataFrame) -> list[str]:
    """The table's certified-accuracy columns, ``r_<radius>``, without their intervals."""
    return [c for c in table.columns if c.startswith("r_") and not c.endswith(CI)]


def level(confidence: float) -> str:
    """A confidence level as people write it: 0.95 -> "95%", 0.975 -> "97.5%"."""
    return f"{100 * confidence:.10g}%"


def clopper_pearson(successes: ArrayLike, trials: ArrayLike, confidence: float) -> tuple[Any, Any]:
    """The two-sided Clopper-Pearson (exact binomial) interval of a proportion, elementwise.

    For whole counts it equals ``scipy.stats.binomtest(k, n).proportion_ci(confidence,
    "exact")``: the beta quantiles ``B((1 - c) / 2; k, n - k + 1)`` and ``B((1 + c) / 2; k + 1,
    n - k)``, 0 at k = 0 and 1 at k = n. A count in between whole numbers (a mean count over
    seeds) takes the same quantiles.

    :return: (low, high): floats for scalar inputs, else arrays of their broadcast shape
    """
    k, n = np.broadcast_arrays(np.asarray(successes, float), np.asarray(trials, float))
    k = np.clip(k, 0, n)  # a mean count may stray past an end by rounding
    tail = (1 - confidence) / 2
    low, high = np.zeros(k.shape), np.ones(k.shape)
    some, short = k > 0, k < n
    low[some] = stats.beta.ppf(tail, k[some], n[some] - k[some] + 1)
    high[short] = stats.beta.ppf(1 - tail, k[short] + 1, n[short] - k[short])
    return (float(low), float(high)) if k.ndim == 0 else (low, high)


def bootstrap_mean(
    values: ArrayLike, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """The bootstrap interval of the mean of ``values`` (one per image) at level ``confidence``:
    bias-corrected and accelerated (BCa), from ``resamples`` draws of as many images, with
    replacement (``scipy.stats.bootstrap``); the same ``seed`` draws the same images. Values
    that are all equal (one image, or nothing certified) leave nothing to resample: the interval
    is their value.
    """
    values = np.asarray(values, dtype=float)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    interval = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="BCa",
        batch=BOOTSTRAP_BATCH,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def check_results(results: pd.DataFrame) -> pd.DataFrame:
    """The certification table sorted by sigma then idx, or a ValueError saying what is wrong.

    Every sigma must hold the same images, so that the envelope compares like with like.
    """
    if not isinstance(results, pd.DataFrame):
        raise ValueError(f"certification results must be a DataFrame, got {type(results)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(
            f"certification results lack the columns {missing}; expected at least "
            f"{list(REQUIRED_COLUMNS)}"
        )
    if results.empty:
        raise ValueError("certification results hold no rows: no image was certified")
    results = results.sort_values(["sigma", "idx"], kind="stable").reset_index(drop=True)
    if results.duplicated(["sigma", "idx"]).any():
        raise ValueError("certification results repeat a (sigma, idx) pair")
    images = {s: tuple(g["idx"]) for s, g in results.groupby("sigma", sort=True)}
    reference = next(iter(images.values()))
    differing = [format_value(s) for s, idx in images.items() if idx != reference]
    if differing:
        raise ValueError(
            f"certification results for sigma {differing} cover other images than for sigma "
            f"{format_value(next(iter(images)))}; every sigma must certify the same images"
        )
    return results


def summary_table(
    results: pd.DataFrame,
    radii: Sequence[float],
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per sigma, then the best-over-sigma row.

    Columns: ``sigma`` (label), ``images``, ``clean_accuracy`` (CERTIFY's accuracy, abstentions
    and skipped images counted wrong: the certified accuracy at radius 0), ``abstain_rate`` (the
    images CERTIFY abstained on); for sequential results, ``skip_rate`` (the images whose
    estimation was skipped at selection, ``stop_at_selection``: not certified, no abstention);
    ``acr`` (average certified radius); unless the results are fixed-n (every ``estimation`` is
    ``fixed``: the samples are n_max for every image), if they have ``n``, ``mean_samples`` and
    ``median_samples`` (the estimation samples per image), and if also ``n_max``, ``saving``
    (n_max / mean_samples: how many times fewer samples than fixed-n CERTIFY at n = n_max); then
    ``r_<radius>`` certified accuracies. The best row holds the envelope of the accuracies and
    leaves the per-sigma columns empty. Then the intervals over the test images, at level
    ``confidence``: ``acr_ci_low``, ``acr_ci_high`` (BCa bootstrap, ``resamples`` draws seeded by
    ``seed``, the same draws of images for every sigma) and ``r_<radius>_ci_low``,
    ``r_<radius>_ci_high`` (Clopper-Pearson; on the best row, that of the count of the sigma
    chosen there).
    """
    results = check_results(results)
    logged = "estimation" in results  # as the certify pipeline's logs have it
    fixed = logged and bool((results["estimation"] == FIXED).all())
    rows, curves = [], []
    for sigma, group in results.groupby("sigma", sort=True):
        radius, correct = group["radius"].to_numpy(), group["correct"].to_numpy()
        curve = certified_accuracy(radius, correct, radii)
        curves.append(curve)
        acr_ci = bootstrap_mean(radius * correct, confidence, resamples, seed)
        skipped = (
            (group["estimation"] == SKIPPED).to_numpy() if logged else np.zeros(len(group), bool)
        )
        abstained = (group["predict"].to_numpy() == Smooth.ABSTAIN) & ~skipped
        rows.append(
            {
                "sigma": format_value(sigma),
                "images": len(group),
                "clean_accuracy": float(np.mean(correct)),
                "abstain_rate": float(np.mean(abstained)),
                **({"skip_rate": float(np.mean(skipped))} if logged and not fixed else {}),
                "acr": average_certified_radius(radius, correct),
                **({} if fixed else _samples(group)),
                **{radius_column(r): a for r, a in zip(radii, curve, strict=True)},
                **dict(zip(ci_columns("acr"), acr_ci, strict=True)),
            }
        )
    images = rows[0]["images"]
    best = {radius_column(r): a for r, a in zip(radii, best_over_sigma(curves), strict=True)}
    rows.append({"sigma": BEST, "images": images, **best})
    table = pd.DataFrame(rows)
    for column in radius_columns(table):
        low, high = clopper_pearson(np.rint(table[column] * images), images, confidence)
        table[ci_columns(column)] = np.column_stack([low, high])
    return table


def _samples(group: pd.DataFrame) -> dict[str, float]:
    """Estimation samples per image, and the saving against n_max, as far as the columns tell."""
    if "n" not in group:
        return {}
    mean = float(group["n"].mean())
    samples = {"mean_samples": mean, "median_samples": float(group["n"].median())}
    if "n_max" in group:
        samples["saving"] = float(group["n_max"].max()) / mean if mean > 0 else float("nan")
    return samples


def radius_grid(results: pd.DataFrame, max_radius: float, step: float = RADIUS_UNIT) -> np.ndarray:
    """Radii 0, step, 2 step, ... up to the larger of ``max_radius`` and the largest certified
    radius; ``step`` must be a positive multiple of RADIUS_UNIT."""
    units = grid_units(step)
    top = max(float(max_radius), float(results["radius"].max()))
    count = math.ceil(round(top / (units * RADIUS_UNIT), 6))
    return np.arange(count + 1) * units / round(1 / RADIUS_UNIT)


def curve_table(
    results: pd.DataFrame, max_radius: float, step: float = RADIUS_UNIT, *, confidence: float
) -> pd.DataFrame:
    """Certified accuracy on a fine radius grid (see ``radius_grid``), in long format: columns
    ``sigma`` (label, or ``best`` for the envelope), ``radius``, ``certified_accuracy``, and its
    Clopper-Pearson interval at level ``confidence``, ``ci_low`` and ``ci_high``."""
    results = check_results(results)
    grid = radius_grid(results, max_radius, step)
    curves = {
        format_value(sigma): certified_accuracy(group["radius"], group["correct"], grid)
        for sigma, group in results.groupby("sigma", sort=True)
    }
    curves[BEST] = best_over_sigma(curves)
    table = pd.DataFrame(
        [
            {"sigma": label, "radius": r, "certified_accuracy": a}
            for label, curve in curves.items()
            for r, a in zip(grid, curve, strict=True)
        ]
    )
    images = results["idx"].nunique()
    counts = np.rint(table["certified_accuracy"] * images)
    table["ci_low"], table["ci_high"] = clopper_pearson(counts, images, confidence)
    return table


def _scalar_metrics(table: pd.DataFrame) -> Iterator[tuple[str, str, float]]:
    """(group, name, value) for every number of the summary table, each interval's ends right
    after its value."""
    accuracies = radius_columns(table)
    for row in table.to_dict("records"):
        curve = curve_name(row["sigma"])
        for column in accuracies:
            for suffix, value in _with_interval(row, column):
                yield "certified_accuracy", f"{curve}/{column}{suffix}", value
        if row["sigma"] != BEST:
            for column in PER_SIGMA_COLUMNS:
                if column in row:
                    for suffix, value in _with_interval(row, column):
                        yield column, f"{curve}{suffix}", value


def _with_interval(row: Mapping[str, Any], column: str) -> Iterator[tuple[str, float]]:
    """("", the row's value of ``column``), then ("/ci_low", ...), ("/ci_high", ...) where the
    row has the column's interval."""
    yield "", float(row[column])
    for end, key in zip(CI, ci_columns(column), strict=True):
        if key in row:
            yield f"/{end}", float(row[key])


def flat_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The whole summary table as flat metrics (certified_accuracy.json): ``sigma_0.25/r_0.50``,
    ``best/r_0.50``, each with its interval (``best/r_0.50/ci_low``, ``.../ci_high``),
    ``acr/sigma_0.25`` (and ``acr/sigma_0.25/ci_low``, ``.../ci_high``),
    ``abstain_rate/sigma_0.25``, ``clean_accuracy/sigma_0.25`` and, if the table has them,
    ``skip_rate/sigma_0.25``, ``mean_samples/sigma_0.25``, ``median_samples/sigma_0.25``,
    ``saving/sigma_0.25``."""
    return {
        name if group == "certified_accuracy" else f"{group}/{name}": value
        for group, name, value in _scalar_metrics(table)
    }


def summary_metrics(table: pd.DataFrame, radii: Sequence[float]) -> dict[str, float]:
    """A few named numbers of the summary table, for ``dvc metrics`` and ``dvc exp show``:
    ``best/r_<radius>``, the best-over-sigma certified accuracy at each of ``radii`` (columns of
    the table), then ``best/acr`` and ``best/clean_accuracy``, the largest over sigma."""
    best = table.set_index("sigma").loc[BEST]
    per_sigma = table[table["sigma"] != BEST]
    return {
        **{f"{BEST}/{radius_column(r)}": float(best[radius_column(r)]) for r in radii},
        f"{BEST}/acr": float(per_sigma["acr"].max()),
        f"{BEST}/clean_accuracy": float(per_sigma["clean_accuracy"].max()),
    }


MLFLOW_PREFIX = "report/"
"""Every MLflow metric of the report starts with this: the MLflow UI groups charts by the name up
to its last "/" and sorts the groups by name, so the report's one-point bars come after the
training curves (``pretrain/...``, ``finetune/...``)."""
CURVE_METRIC = f"{MLFLOW_PREFIX}certified_accuracy_vs_radius_x100"
"""The curves' metric histories, ``<CURVE_METRIC>/sigma_0.25``: their step is the radius times
100 (in RADIUS_UNITs), as the name says, since the MLflow UI labels the axis "Step"."""


def metric_histories(table: pd.DataFrame, curve: pd.DataFrame) -> dict[str, Any]:
    """Metrics for an MLflow run, in kedro-mlflow's metrics-history format (which
    ``catalog.MlflowMetricsBatchDataset`` logs), every name under ``report/``.

    Scalars (step 0): ``report/certified_accuracy/sigma_0.25/r_0.50``,
    ``report/certified_accuracy/best/r_0.50``, each with its interval
    (``report/certified_accuracy/best/r_0.50/ci_low``, ``.../ci_high``), ``report/acr/sigma_0.25``
    (and ``report/acr/sigma_0.25/ci_low``, ``.../ci_high``), ``report/abstain_rate/...``,
    ``report/clean_accuracy/...`` and, if the table has them, ``report/skip_rate/...``,
    ``report/mean_samples/...``, ``report/median_samples/...``, ``report/saving/...``. Each curve
    is a history, ``report/certified_accuracy_vs_radius_x100/sigma_0.25`` (and ``/best``), whose
    step is the radius in units of RADIUS_UNIT (hundredths), so the MLflow UI draws it against
    the radius.
    """
    metrics: dict[str, Any] = {
        f"{MLFLOW_PREFIX}{group}/{name}": {"value": value, "step": 0}
        for group, name, value in _scalar_metrics(table)
    }
    for label, group in curve.groupby("sigma", sort=False):
        metrics[f"{CURVE_METRIC}/{curve_name(label)}"] = [
            {"value": float(a), "step": round(r / RADIUS_UNIT)}
            for r, a in zip(group["radius"], group["certified_accuracy"], strict=True)
        ]
    return metrics


def _percent(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def _formatted(values: pd.Series, template: str) -> pd.Series:
    """The numbers put into ``template`` (``str.format``), empty where missing."""
    return values.map(lambda v: "" if pd.isna(v) else template.format(v))


def _with_ci(table: pd.DataFrame, column: str, template: str, scale: float = 1.0) -> pd.Series:
    """``column``'s values with their intervals, ``value [low, high]``, each number ``scale``d
    and put into ``template``; empty where the value is missing."""

    def shown(value: float) -> str:
        return template.format(scale * value)

    low, high = ci_columns(column)
    return pd.Series(
        [
            "" if pd.isna(v) else f"{shown(v)} [{shown(lo)}, {shown(hi)}]"
            for v, lo, hi in zip(table[column], table[low], table[high], strict=True)
        ],
        index=table.index,
    )


def markdown_report(
    table: pd.DataFrame,
    dataset: str,
    reference_points: Sequence[Mapping[str, Any]] = (),
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> str:
    """The summary table with its intervals (level ``confidence``; ACR's from ``resamples``
    bootstrap draws seeded by ``seed``), and the published reference points, if any, as
    Markdown."""
    images = int(table["images"].iloc[0])
    shown = pd.DataFrame(
        {
            "sigma": [f"**{s}**" if s == BEST else s for s in table["sigma"]],
            **{f"r = {c[2:]}": _with_ci(table, c, "{:.1f}", 100) for c in radius_columns(table)},
            "ACR": _with_ci(table, "acr", "{:.3f}"),
            "abstain (%)": table["abstain_rate"].map(_percent),
            "clean (%)": table["clean_accuracy"].map(_percent),
        }
    )
    notes = []
    if "skip_rate" in table:
        notes.append(
            "Skipped: images whose estimation stopped at selection (stop_at_selection): not "
            "certified, and no abstention."
        )
        skipped = table["skip_rate"].map(_percent)
        shown.insert(shown.columns.get_loc("abstain (%)") + 1, "skipped (%)", skipped)
    if "mean_samples" in table:
        notes.append("Samples: estimation samples per image.")
        shown["samples (mean)"] = _formatted(table["mean_samples"], "{:,.0f}")
        shown["samples (median)"] = _formatted(table["median_samples"], "{:,.0f}")
    if "saving" in table:
        notes.append("Saving: n_max over their mean, against fixed-n CERTIFY at n = n_max.")
        shown["saving"] = _formatted(table["saving"], "{:.1f}x")
    note = "".join(f" {n}" for n in notes)
    text = (
        f"# Certified accuracy: {dataset}\n\n"
        f"Certified accuracy (%) of the smoothed classifier at L2 radius r, in [0, 1] pixel units, "
        f"on {images} test images; **best** is the best over sigma at each "
        "radius. ACR: average certified radius. Clean: the smoothed classifier's accuracy "
        f"(abstentions count as errors).{note}\n\n"
        f"In brackets, {level(confidence)} intervals over the test images: for a certified "
        f"accuracy the Clopper-Pearson (exact binomial) interval of its count out of {images}, "
        f"for ACR the BCa bootstrap ({resamples:,} resamples of the images, seed {seed}). "
        "They cover the choice of test images, each with its certification noise, for this "
        "trained model and these certification settings; not a retraining. **best** takes at "
        "each radius the sigma that does best on these same images, and its interval is that "
        "sigma's: it leaves the choice out, so the best row leans high where sigmas are "
        "close.\n\n" + markdown_table(shown)
    )
    if reference_points:
        radii = sorted({float(r) for point in reference_points for r in point["radii"]})
        published = pd.DataFrame(
            [
                {
                    "published": point["label"],
                    **{
                        f"r = {format_value(r)}": _percent(value)
                        for r, value in zip(
                            point["radii"], point["certified_accuracy"], strict=True
                        )
                    },
                }
                for point in reference_points
            ],
            columns=["published", *(f"r = {format_value(r)}" for r in radii)],
        ).fillna("")
        text += "\n## Published results\n\n" + markdown_table(published)
    return text


def markdown_table(frame: pd.DataFrame, label_column: bool = False) -> str:
    """A pipe table (tabulate, via pandas), its columns right-aligned, the first left-aligned
    when it holds labels."""
    align = ["left" if label_column else "right"] + ["right"] * (frame.shape[1] - 1)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def plot_curves(
    curve: pd.DataFrame,
    dataset: str,
    reference_points: Sequence[Mapping[str, Any]] = (),
    *,
    confidence: float,
) -> Figure:
    """Certified accuracy against radius: a step curve per sigma with its Clopper-Pearson band
    (level ``confidence``, shaded), the best-over-sigma envelope (dashed; its band is that of the
    sigma it follows) and the published reference points (markers)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for label, group in curve.groupby("sigma", sort=False):
        label = str(label)
        envelope = label == BEST
        (line,) = axes.step(
            group["radius"],
            group["certified_accuracy"],
            where="post",
            label="best over sigma" if envelope else curve_name(label),
            color="black" if envelope else None,
            linestyle="--" if envelope else "-",
            linewidth=2.2 if envelope else 1.5,
            zorder=3 if envelope else 2,
        )
        if not envelope:
            axes.fill_between(
                group["radius"],
                group["ci_low"],
                group["ci_high"],
                step="post",
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
    for point, marker in zip(reference_points, itertools.cycle("os^Dv<>p*"), strict=False):
        axes.scatter(
            point["radii"],
            point["certified_accuracy"],
            marker=marker,
            s=45,
            facecolors="none",
            edgecolors="tab:red",
            label=point["label"],
            zorder=4,
        )
    axes.set(
        xlabel="L2 radius ([0, 1] pixel units)",
        ylabel="certified accuracy",
        title=f"Certified accuracy: {dataset}",
        xlim=(0, float(curve["radius"].max())),
        ylim=(0, 1.02),
    )
    axes.grid(alpha=0.3)
    band = Patch(
        color="grey", alpha=0.3, label=f"{level(confidence)} Clopper-Pearson band (test images)"
    )
    axes.legend(handles=[*axes.get_legend_handles_labels()[0], band], fontsize="small")
    return figure
