"""The comparison of variants: per-variant spread over seeds and intervals by hand; the variants'
intervals (Clopper-Pearson at the mean count over the seeds) covering the true certified accuracy
at least at their level, which an interval that counts the seeds as further images does not; the
paired bootstrap's intervals covering the true gap at their nominal rate, which an unpaired or a
without-replacement bootstrap (kept below, deliberately wrong) does not."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dmae_pipeline.reporting import comparison
from dmae_pipeline.reporting.certification import clopper_pearson
from dmae_pipeline.reporting.comparison import (
    check_runs,
    markdown_report,
    metrics,
    paired_bootstrap,
    plot_comparison,
    summary_table,
)

RADII = [0.0, 0.5]


def run(variant: str, seed: int, sigma: float, radius: list[float], correct: list[int]):
    count = len(radius)
    return pd.DataFrame(
        {
            "variant": variant,
            "seed": seed,
            "sigma": sigma,
            "idx": np.arange(count) * 3,
            "predict": [1 if c else -1 for c in correct],
            "radius": radius,
            "correct": correct,
            "n": 1000,
        }
    )


def hand_made() -> pd.DataFrame:
    """Two variants, two seeds, two sigmas, four images (shuffled: order must not matter)."""
    runs = [
        # variant a, seed 0: sigma 0.25 certifies 3 images at r 0 and 1 at r 0.5; sigma 0.5: 2, 2
        run("a", 0, 0.25, [0.3, 0.6, 0.1, 0.0], [1, 1, 1, 0]),
        run("a", 0, 0.5, [0.9, 0.0, 0.7, 0.0], [1, 0, 1, 0]),
        # seed 1: sigma 0.25: 2 and 0; sigma 0.5: 1 and 1 -> best 2/4 at r 0, 1/4 at r 0.5
        run("a", 1, 0.25, [0.2, 0.3, 0.0, 0.0], [1, 1, 0, 0]),
        run("a", 1, 0.5, [0.0, 0.0, 0.8, 0.0], [0, 0, 1, 0]),
        # variant b: every seed and sigma certifies image 0 only, at r 0.4
        *(
            run("b", s, sigma, [0.4, 0, 0, 0], [1, 0, 0, 0])
            for s in (0, 1)
            for sigma in (0.25, 0.5)
        ),
    ]
    return pd.concat(runs, ignore_index=True).sample(frac=1.0, random_state=0)


def test_summary_table_by_hand():
    table = summary_table(hand_made(), RADII, confidence=0.95).set_index(["variant", "radius"])
    # a: best over sigma, seed 0: [3/4, 2/4], seed 1: [2/4, 1/4]
    a0, a1 = np.array([0.75, 0.5]), np.array([0.5, 0.25])
    np.testing.assert_allclose(table.loc["a"]["mean"], (a0 + a1) / 2)
    np.testing.assert_allclose(table.loc["a"]["std"], np.std([a0, a1], axis=0, ddof=1))
    np.testing.assert_allclose(table.loc["a"]["min"], a1)
    np.testing.assert_allclose(table.loc["a"]["max"], a0)
    np.testing.assert_allclose(table.loc["b"]["mean"], [0.25, 0.0])
    np.testing.assert_allclose(table.loc["b"]["std"], [0.0, 0.0])
    assert set(table["seeds"]) == {2} and set(table["images"]) == {4}
    assert set(table["samples"]) == {1000}
    assert list(table.index.get_level_values("variant").unique()) == ["a", "b"]
    assert list(table.columns[-2:]) == ["ci_low", "ci_high"]  # after the columns it had before


def exact(k: int, n: int, confidence: float) -> list[float]:
    interval = stats.binomtest(k, n).proportion_ci(confidence, method="exact")
    return [interval.low, interval.high]


def test_each_variants_interval_is_clopper_pearsons_at_its_mean_count():
    table = summary_table(hand_made(), RADII, confidence=0.9).set_index(["variant", "radius"])
    ci = table[["ci_low", "ci_high"]]
    # b: both seeds certify 1 of the 4 images at r 0, none at r 0.5: the exact intervals
    assert ci.loc[("b", 0.0)].tolist() == pytest.approx(exact(1, 4, 0.9))
    assert ci.loc[("b", 0.5)].tolist() == pytest.approx(exact(0, 4, 0.9))
    # a at r 0.5: seeds certify 2 and 1 images, a mean count of 1.5: between the two intervals
    assert ci.loc[("a", 0.5)].tolist() == pytest.approx(clopper_pearson(1.5, 4, 0.9))
    one, two = exact(1, 4, 0.9), exact(2, 4, 0.9)
    assert one[0] < ci.loc[("a", 0.5), "ci_low"] < two[0]
    assert one[1] < ci.loc[("a", 0.5), "ci_high"] < two[1]


def test_runs_on_other_images_or_sigmas_are_refused():
    results = hand_made()
    other_images = results.assign(idx=np.where(results["variant"] == "b", results["idx"] + 1, 0))
    with pytest.raises(ValueError, match="certified other images or sigmas than run"):
        check_runs(other_images.drop_duplicates(["variant", "seed", "sigma", "idx"]))
    with pytest.raises(ValueError, match=r"run b seed \d certified other images or sigmas than"):
        check_runs(results[~((results["variant"] == "b") & (results["sigma"] == 0.5))])
    with pytest.raises(ValueError, match=r"lack the columns \['seed'\]"):
        check_runs(results.drop(columns="seed"))


def test_bootstrap_of_a_variant_that_wins_on_every_image_and_of_equal_variants():
    results = hand_made()
    gaps = paired_bootstrap(results, [["a", "b"], ["b", "b"]], RADII, 200, 0.9, 0)
    ahead = gaps[gaps["baseline"] == "b"].set_index(["variant", "radius"])
    np.testing.assert_allclose(ahead.loc["a"]["gap"], [0.375, 0.375])
    tie = ahead.loc["b"]
    assert (tie[["gap", "low", "high"]] == 0).all().all() and (tie["p_better"] == 0.5).all()
    # a is never behind b on any resample at r 0.5: b certifies nothing there
    assert ahead.loc[("a", 0.5), "low"] >= 0 and ahead.loc[("a", 0.5), "p_better"] > 0.9
    with pytest.raises(ValueError, match=r"no results for the variants \['c'\]"):
        paired_bootstrap(results, [["a", "c"]], RADII, 10, 0.9, 0)


# --- coverage of a variant's interval ---------------------------------------------------------
#
# Three seeds of a variant certify the same test images. Each image has its own difficulty q (the
# probability that a seed certifies it), drawn from a beta distribution of mean P; the seeds then
# certify it independently. The seeds agree on most images when the beta is concentrated near 0
# and 1 (small SPREAD). The variant's true certified accuracy is P.

SEEDS, IMAGES, SEED_TRIALS = 3, 359, 4000
SEED_CASES = [(0.5, 1.0), (0.05, 2.0), (0.9, 0.3), (0.01, 0.5), (0.3, 20.0)]  # (P, SPREAD)
SEED_FLOOR = 0.95 - 3 * math.sqrt(0.95 * 0.05 / SEED_TRIALS)  # 0.940


def seed_coverage(interval) -> list[float]:
    """Per case, the share of SEED_TRIALS test sets whose interval holds P; ``interval(counts)``
    takes the images each seed certified, [trials, seeds]."""
    rng = np.random.default_rng(99)
    coverage = []
    for p, spread in SEED_CASES:
        q = rng.beta(p * spread, (1 - p) * spread, size=(SEED_TRIALS, IMAGES, 1))
        counts = (rng.random((SEED_TRIALS, IMAGES, SEEDS)) < q).sum(axis=1)
        low, high = interval(counts)
        coverage.append(float(np.mean((low <= p) & (p <= high))))
    return coverage


def at_the_mean_count(counts):
    """The comparison's: Clopper-Pearson at the mean count over the seeds."""
    return clopper_pearson(counts.mean(axis=1), IMAGES, 0.95)


def seeds_as_more_images(counts):
    """WRONG: counts the seeds' certificates as SEEDS x IMAGES independent images."""
    return clopper_pearson(counts.sum(axis=1), SEEDS * IMAGES, 0.95)


def test_variant_intervals_hold_the_true_accuracy_at_least_at_their_level():
    assert min(seed_coverage(at_the_mean_count)) >= SEED_FLOOR


def test_the_coverage_check_catches_seeds_counted_as_images():
    assert min(seed_coverage(seeds_as_more_images)) < SEED_FLOOR


# --- coverage of the bootstrap interval -------------------------------------------------------
#
# Two variants certify the same images; at r = 0 the score is the share of correct images. The
# variants agree on most images (paired outcomes are strongly correlated), and the variant is
# right on 6% more of them in expectation: TRUE_GAP.

TRUE_GAP = 0.06
OUTCOMES = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])  # (variant, baseline) correct
PROBABILITIES = [0.74, 0.18, 0.07, 0.01]  # P(variant) - P(baseline) = 0.07 - 0.01


def paired_sample(rng: np.random.Generator, images: int) -> pd.DataFrame:
    outcomes = OUTCOMES[rng.choice(len(OUTCOMES), size=images, p=PROBABILITIES)]
    return pd.concat(
        [run(v, 0, 0.25, [0.5] * images, list(outcomes[:, i])) for i, v in enumerate("ab")],
        ignore_index=True,
    )


def coverage(bootstrap: Callable[..., pd.DataFrame], trials: int, confidence: float) -> float:
    """The share of trials whose interval holds TRUE_GAP."""
    rng = np.random.default_rng(12345)
    covered = 0
    for trial in range(trials):
        gap = bootstrap(paired_sample(rng, 150), [["a", "b"]], [0.0], 300, confidence, trial)
        covered += int(gap["low"].iloc[0] <= TRUE_GAP <= gap["high"].iloc[0])
    return covered / trials


def unpaired_bootstrap(results, gaps, radii, resamples, confidence, seed):
    """WRONG: resamples each variant's images independently, ignoring that they are paired."""
    hits = comparison._hits(check_runs(results), radii)
    count = next(iter(hits.values())).shape[1]
    rng = np.random.default_rng(seed)
    resampled = {
        variant: comparison._scores(
            {key: h for key, h in hits.items() if key[0] == variant},
            rng.multinomial(count, np.full(count, 1 / count), resamples),
        )[variant]
        for variant in dict.fromkeys(key[0] for key in hits)
    }
    return _interval(hits, gaps, resampled, confidence)


def permutation_bootstrap(results, gaps, radii, resamples, confidence, seed):
    """WRONG: draws the images without replacement, so that every resample is the sample."""
    hits = comparison._hits(check_runs(results), radii)
    count = next(iter(hits.values())).shape[1]
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.permutation(count), minlength=count)] * resamples)
    return _interval(hits, gaps, comparison._scores(hits, draws), confidence)


def _interval(hits, gaps, resampled, confidence):
    observed = comparison._scores(hits, comparison._every_image(hits))
    ((variant, baseline),) = gaps
    differences = resampled[variant][:, 0] - resampled[baseline][:, 0]
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    gap = observed[variant][0, 0] - observed[baseline][0, 0]
    return pd.DataFrame([{"gap": gap, "low": low, "high": high}])


TRIALS, CONFIDENCE = 200, 0.8
# 3 binomial standard errors of a coverage of 0.8 over 200 trials: 0.085
LOW, HIGH = CONFIDENCE - 0.085, CONFIDENCE + 0.085


def test_paired_bootstrap_intervals_cover_the_true_gap_at_their_nominal_rate():
    assert LOW <= coverage(paired_bootstrap, TRIALS, CONFIDENCE) <= HIGH


@pytest.mark.parametrize("wrong", [unpaired_bootstrap, permutation_bootstrap])
def test_the_coverage_check_catches_a_wrong_bootstrap(wrong):
    assert not LOW <= coverage(wrong, TRIALS, CONFIDENCE) <= HIGH


def test_markdown_and_metrics_show_the_table_and_the_gaps():
    results = hand_made()
    table = summary_table(results, RADII, confidence=0.9)
    gaps = paired_bootstrap(results, [["a", "b"]], RADII, 100, 0.9, 0)
    text = markdown_report(table, gaps, 0.9)
    assert "on 4 test images, n = 1,000 noisy samples per certificate (mean)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    a = table.set_index(["variant", "radius"]).loc["a", ["ci_low", "ci_high"]] * 100
    assert [cell.strip() for cell in rows[1].split("|")[1:-1]] == [
        "a",
        "2",
        f"62.5 ± 17.7 [{a.iloc[0, 0]:.1f}, {a.iloc[0, 1]:.1f}]",
        f"37.5 ± 17.7 [{a.iloc[1, 0]:.1f}, {a.iloc[1, 1]:.1f}]",
    ]
    assert "+37.5 [" in rows[-1] and "90% paired-bootstrap interval" in text
    prose = " ".join(text.split())
    assert "the 90% Clopper-Pearson interval over the test images of the mean" in prose
    assert "not a retraining" in prose and "on these same images" in prose
    found = metrics(table, gaps)
    assert found["a/r_0.50/mean"] == pytest.approx(0.375)
    assert found["a/r_0.50/ci_low"] == pytest.approx(a.iloc[1, 0] / 100)
    assert found["b/r_0.00/ci_high"] == pytest.approx(exact(1, 4, 0.9)[1])
    assert found["gap/a-b/r_0.00"] == pytest.approx(0.375)
    assert {"gap/a-b/r_0.00/low", "gap/a-b/r_0.00/high", "gap/a-b/r_0.00/p_better"} <= set(found)


def test_plot_has_a_curve_and_a_seed_band_per_variant():
    figure = plot_comparison(hand_made(), 1.0, "digits")
    (axes,) = figure.axes
    assert [line.get_label() for line in axes.get_lines()] == ["a (2 seeds)", "b (2 seeds)"]
    assert len(axes.collections) == 2  # the bands
