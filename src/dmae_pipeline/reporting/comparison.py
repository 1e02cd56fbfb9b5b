"""The comparison of variants (scratch, MAE, DMAE): each variant's certified accuracy, best over
sigma, over its seeds, and a paired bootstrap over the test images of the gap between two.

Everything starts from the runs' certification results in one table, one row per (variant, seed,
sigma, image), with at least the columns ``variant seed sigma idx predict radius correct`` (and
``n``, the noisy samples of each certificate, where known). Every run must have certified the
same images at the same sigmas: the variants are compared on the same images, and each bootstrap
resample of the images applies to every run alike (paired). A variant's score at radius r is the
mean over its seeds of the best-over-sigma certified accuracy at r; its interval over the test
images is the Clopper-Pearson interval of the mean count of images certified there. That is exact
for one seed; for several it treats the mean count as binomial, the largest variance that an
average over seeds of per-image outcomes, each in [0, 1], can have, so it errs wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dmae_pipeline.reporting.certification import (
    CI,
    check_results,
    clopper_pearson,
    level,
    markdown_table,
    radius_column,
    radius_grid,
)
from dmae_pipeline.reporting.names import format_value

RUN = ["variant", "seed"]


def check_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The results sorted by run, sigma and idx, or a ValueError saying what is wrong: a missing
    column, or a run that certified other images or sigmas than the first run."""
    missing = [c for c in RUN if c not in results.columns]
    if missing:
        raise ValueError(f"comparison results lack the columns {missing}")
    if results.empty:
        raise ValueError("comparison results hold no rows: no run was certified")
    runs = {
        key: check_results(group.drop(columns=RUN))
        for key, group in results.groupby(RUN, sort=False)
    }
    (first, reference), *others = runs.items()
    for key, table in others:
        if not table[["sigma", "idx"]].equals(reference[["sigma", "idx"]]):
            raise ValueError(
                f"run {_name(key)} certified other images or sigmas than run {_name(first)}; "
                "every run must certify the same test images at the same sigmas"
            )
    return pd.concat(
        [table.assign(variant=key[0], seed=key[1]) for key, table in runs.items()],
        ignore_index=True,
    )


def _name(key: tuple) -> str:
    return f"{key[0]} seed {key[1]}"


def _hits(results: pd.DataFrame, radii: Sequence[float]) -> dict[tuple[str, int], np.ndarray]:
    """Per run (variant, seed, in order of appearance), whether each sigma's certificate of each
    image is correct with a radius of at least r, for each r of ``radii``: [sigmas, images, radii].
    The certified accuracy of a sigma is the mean of its hits over the images."""
    thresholds = np.asarray(radii, dtype=float)
    return {
        key: np.stack(
            [
                sigma["correct"].to_numpy(dtype=bool)[:, None]
                & (sigma["radius"].to_numpy()[:, None] >= thresholds)
                for _, sigma in group.groupby("sigma", sort=True)
            ]
        )
        for key, group in results.groupby(RUN, sort=False)
    }


def _certified(hits: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """How many of each draw's images (``draws``: the times each image is drawn, one draw per
    row) a run certifies at each radius, with the best sigma there: [draws, radii]."""
    return np.einsum("bi,sir->bsr", draws, hits).max(axis=1)


def _scores(hits: Mapping[tuple[str, int], np.ndarray], draws: np.ndarray) -> dict[str, np.ndarray]:
    """Every variant's score (the mean over its seeds of the best-over-sigma certified accuracy)
    on each draw of the images: [draws, radii]. Exact counts, so equal scores are equal."""
    certified: dict[str, list[np.ndarray]] = {}
    for (variant, _), h in hits.items():
        certified.setdefault(variant, []).append(_certified(h, draws))
    drawn = draws.sum(axis=1, keepdims=True)
    return {v: np.sum(counts, axis=0) / (len(counts) * drawn) for v, counts in certified.items()}


def _every_image(hits: Mapping[tuple[str, int], np.ndarray]) -> np.ndarray:
    """The draw that is the sample itself: every image once."""
    return np.ones((1, next(iter(hits.values())).shape[1]), dtype=np.int64)


def summary_table(
    results: pd.DataFrame, radii: Sequence[float], *, confidence: float
) -> pd.DataFrame:
    """Per variant and radius, the best-over-sigma certified accuracy over the seeds: columns
    ``variant``, ``radius``, ``seeds``, ``images``, ``samples`` (mean noisy samples per
    certificate, NaN if unknown), ``mean``, ``std`` (sample standard deviation; NaN for one
    seed), ``min``, ``max``, and ``ci_low``, ``ci_high``: the Clopper-Pearson interval of the
    mean (see the module) at level ``confidence``."""
    table = _spread(results, radii)
    table["ci_low"], table["ci_high"] = clopper_pearson(
        table["mean"] * table["images"], table["images"], confidence
    )
    return table


def _spread(results: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """``summary_table`` without the intervals."""
    results = check_runs(results)
    hits = _hits(results, radii)
    images = _every_image(hits)
    curves = pd.DataFrame(
        {"variant": variant, "radius": r, "certified_accuracy": a}
        for (variant, _), h in hits.items()
        for r, a in zip(radii, _certified(h, images)[0] / images.size, strict=True)
    )
    spread = (
        curves.groupby(["variant", "radius"], sort=False)["certified_accuracy"]
        .agg(seeds="count", mean="mean", std="std", min="min", max="max")
        .reset_index()
    )
    return spread.assign(
        images=images.size,
        samples=results["n"].mean() if "n" in results.columns else np.nan,
    )[["variant", "radius", "seeds", "images", "samples", "mean", "std", "min", "max"]]


def paired_bootstrap(
    results: pd.DataFrame,
    gaps: Sequence[Sequence[str]],
    radii: Sequence[float],
    resamples: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """The gap in score (see the module) between each pair ``(variant, baseline)`` of ``gaps``,
    with a paired bootstrap over the test images: each resample draws as many images as there
    are, with replacement, and scores every run on the same draw.

    Columns: ``variant``, ``baseline``, ``radius``, ``gap`` (on all images), ``low`` and
    ``high`` (the percentile interval holding ``confidence`` of the resampled gaps) and
    ``p_better`` (the share of resamples in which the variant scores above the baseline, ties
    counting half: 0.5 for two variants that never differ).
    """
    hits = _hits(check_runs(results), radii)
    variants = {variant for variant, _ in hits}
    unknown = sorted({v for pair in gaps for v in pair} - variants)
    if unknown:
        raise ValueError(f"no results for the variants {unknown}; the results hold {variants}")
    images = _every_image(hits)
    draws = np.random.default_rng(seed).multinomial(images.size, images[0] / images.size, resamples)
    observed = _scores(hits, images)
    resampled = _scores(hits, draws)
    tail = (1 - confidence) / 2
    rows = []
    for variant, baseline in gaps:
        gap = (observed[variant] - observed[baseline])[0]
        gaps_ = resampled[variant] - resampled[baseline]
        low, high = np.quantile(gaps_, [tail, 1 - tail], axis=0)
        rows += [
            {
                "variant": variant,
                "baseline": baseline,
                "radius": r,
                "gap": gap[i],
                "low": low[i],
                "high": high[i],
                "p_better": float(np.mean((gaps_[:, i] > 0) + 0.5 * (gaps_[:, i] == 0))),
            }
            for i, r in enumerate(radii)
        ]
    return pd.DataFrame(rows)


def markdown_report(summary: pd.DataFrame, gaps: pd.DataFrame, confidence: float) -> str:
    """The summary table and the gaps as Markdown, accuracies in percent; ``confidence``: the
    level of the intervals of both."""
    first = summary.iloc[0]
    samples = first["samples"]
    samples = (
        "" if pd.isna(samples) else f", n = {samples:,.0f} noisy samples per certificate (mean)"
    )
    accuracy = pd.DataFrame(
        {
            "variant": variant,
            "seeds": str(group["seeds"].iloc[0]),
            **{f"r = {format_value(row.radius)}": _mean_std(row) for row in group.itertuples()},
        }
        for variant, group in summary.groupby("variant", sort=False)
    )
    differences = pd.DataFrame(
        {
            "gap": f"{variant} - {baseline}",
            **{f"r = {format_value(row.radius)}": _gap(row) for row in group.itertuples()},
        }
        for (variant, baseline), group in gaps.groupby(["variant", "baseline"], sort=False)
    )
    return (
        "# Certified accuracy by variant\n\n"
        "Certified accuracy (%) of the smoothed classifier at L2 radius r, best over sigma, "
        f"mean ± standard deviation over the seeds, on {int(first['images'])} test images"
        f"{samples}. In brackets, the {level(confidence)} Clopper-Pearson interval over the "
        "test images of the mean, from the mean count of images certified (exact for one seed; "
        "for a mean over seeds it takes that count as binomial, which errs wide). It covers "
        "the choice of test images for these trained models, not a retraining (the standard "
        "deviation shows the seeds); each seed picks its best sigma on these same images.\n\n"
        + markdown_table(accuracy, label_column=True)
        + "\n## Gaps\n\n"
        "Gap in certified accuracy (percentage points, between the means over the seeds), its "
        f"{level(confidence)} paired-bootstrap interval over the test images, and the share of "
        "resamples in which the first variant is ahead (ties count half).\n\n"
        + markdown_table(differences, label_column=True)
    )


def _mean_std(row: Any) -> str:
    mean = f"{100 * row.mean:.1f}"
    spread = "" if pd.isna(row.std) else f" ± {100 * row.std:.1f}"
    return f"{mean}{spread} [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]"


def _gap(row: Any) -> str:
    return f"{100 * row.gap:+.1f} [{100 * row.low:+.1f}, {100 * row.high:+.1f}], {row.p_better:.0%}"


def metrics(summary: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, float]:
    """Flat metrics for a tracker: ``<variant>/r_0.50/mean`` (also ``std``, ``ci_low``,
    ``ci_high``), ``gap/<variant>-<baseline>/r_0.50`` (also ``low``, ``high``, ``p_better``)."""
    found = {
        f"{row.variant}/{radius_column(row.radius)}/{stat}": float(getattr(row, stat))
        for row in summary.itertuples()
        for stat in ("mean", "std", *CI)
        if not pd.isna(getattr(row, stat))
    }
    found |= {
        f"gap/{row.variant}-{row.baseline}/{radius_column(row.radius)}"
        + ("" if stat == "gap" else f"/{stat}"): float(getattr(row, stat))
        for row in gaps.itertuples()
        for stat in ("gap", "low", "high", "p_better")
    }
    return found


def plot_comparison(results: pd.DataFrame, max_radius: float, title: str) -> Figure:
    """Certified accuracy (best over sigma) against radius: per variant the mean over its seeds
    as a step curve, and the band from the lowest to the highest seed."""
    results = check_runs(results)
    grid = radius_grid(results, max_radius)
    spread = _spread(results, grid)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for variant, group in spread.groupby("variant", sort=False):
        seeds = int(group["seeds"].iloc[0])
        (line,) = axes.step(
            group["radius"], group["mean"], where="post", label=f"{variant} ({seeds} seeds)"
        )
        axes.fill_between(
            group["radius"],
            group["min"],
            group["max"],
            step="post",
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    axes.set(
        xlabel="L2 radius ([0, 1] pixel units)",
        ylabel="certified accuracy (best over sigma)",
        title=f"{title}: mean over seeds, band from the lowest to the highest seed",
        xlim=(0, float(grid[-1])),
        ylim=(0, 1.02),
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure
