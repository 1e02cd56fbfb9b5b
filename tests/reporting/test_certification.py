"""Certification reports: tables, curves, metrics, Markdown and plot by hand; the intervals
against scipy's exact binomial interval and at their nominal coverage over many simulated test
sets, which deliberately too-narrow intervals (kept below) do not reach."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from scipy import stats

from dmae_pipeline.params import ParamsError, ReportParams
from dmae_pipeline.reporting.certification import (
    BEST,
    bootstrap_mean,
    clopper_pearson,
    curve_table,
    flat_metrics,
    format_value,
    markdown_report,
    metric_histories,
    plot_curves,
    summary_metrics,
    summary_table,
)

RADII = [0.0, 0.25, 0.5, 1.0]
REFERENCE = [{"label": "paper", "radii": [0.25, 0.5], "certified_accuracy": [0.6, 0.3]}]
INTERVALS = {"confidence": 0.95, "resamples": 500, "seed": 0}
LEVEL = {"confidence": 0.95}


def exact(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """scipy's exact binomial (Clopper-Pearson) interval of k successes out of n."""
    interval = stats.binomtest(k, n).proportion_ci(confidence, method="exact")
    return interval.low, interval.high


def hand_made_results() -> pd.DataFrame:
    """Two sigmas on the same four images; predict -1 is an abstention, predict 3 a wrong class."""
    rows = [
        # sigma, idx, predict, radius, correct
        (0.25, 0, 1, 0.3, 1),
        (0.25, 1, 2, 0.6, 1),
        (0.25, 2, -1, 0.0, 0),
        (0.25, 3, 3, 0.1, 0),
        (0.5, 0, 1, 0.9, 1),
        (0.5, 1, -1, 0.0, 0),
        (0.5, 2, 0, 0.4, 1),
        (0.5, 3, 4, 1.2, 1),
    ]
    table = pd.DataFrame(rows, columns=["sigma", "idx", "predict", "radius", "correct"])
    return table.sample(frac=1.0, random_state=0)  # the functions must not rely on the order


def test_summary_table_by_hand():
    table = summary_table(hand_made_results(), RADII, **INTERVALS).set_index("sigma")
    assert list(table.index) == ["0.25", "0.50", BEST]
    values = [
        "images", "clean_accuracy", "abstain_rate", "acr", "r_0.00", "r_0.25", "r_0.50", "r_1.00",
    ]  # fmt: skip
    radii = ("0.00", "0.25", "0.50", "1.00")
    assert list(table.columns) == [
        *values,
        "acr_ci_low",
        "acr_ci_high",
        *(f"r_{r}_ci_{end}" for r in radii for end in ("low", "high")),
    ]  # the intervals come after every column the table had before them
    # sigma 0.25: correct images 0 (r 0.3) and 1 (r 0.6); sigma 0.5: 0 (0.9), 2 (0.4), 3 (1.2)
    expected = {
        "0.25": [4, 0.5, 0.25, (0.3 + 0.6) / 4, 0.5, 0.5, 0.25, 0.0],
        "0.50": [4, 0.75, 0.25, (0.9 + 0.4 + 1.2) / 4, 0.75, 0.75, 0.5, 0.25],
    }
    for sigma, numbers in expected.items():
        np.testing.assert_allclose(table.loc[sigma, values].to_numpy(dtype=float), numbers)
    best = table.loc[BEST]
    np.testing.assert_allclose(
        best[["r_0.00", "r_0.25", "r_0.50", "r_1.00"]], [0.75, 0.75, 0.5, 0.25]
    )
    assert best["images"] == 4
    assert best[["clean_accuracy", "abstain_rate", "acr", "acr_ci_low", "acr_ci_high"]].isna().all()


def test_the_tables_intervals_are_scipys_exact_intervals_of_the_counts():
    table = summary_table(hand_made_results(), RADII, **INTERVALS).set_index("sigma")
    # images certified at r = 0, 0.25, 0.5, 1.0 (of 4); best: the larger count at each radius
    counts = {"0.25": [2, 2, 1, 0], "0.50": [3, 3, 2, 1], BEST: [3, 3, 2, 1]}
    for sigma, row in counts.items():
        for radius, k in zip(("0.00", "0.25", "0.50", "1.00"), row, strict=True):
            interval = table.loc[sigma, [f"r_{radius}_ci_low", f"r_{radius}_ci_high"]]
            assert interval.tolist() == pytest.approx(exact(k, 4))
    at_90 = summary_table(hand_made_results(), RADII, **{**INTERVALS, "confidence": 0.9})
    assert at_90.loc[0, ["r_0.50_ci_low", "r_0.50_ci_high"]].tolist() == pytest.approx(
        exact(1, 4, 0.9)
    )


def test_curve_table_is_exact_on_the_grid():
    curve = curve_table(hand_made_results(), max_radius=1.0, **LEVEL)
    assert list(curve.columns) == ["sigma", "radius", "certified_accuracy", "ci_low", "ci_high"]
    # the grid reaches the largest certified radius (1.2) although max_radius is 1.0
    for label in ("0.25", "0.50", BEST):
        radii = curve.loc[curve["sigma"] == label, "radius"].to_numpy()
        np.testing.assert_allclose(radii, np.arange(121) * 0.01, atol=1e-12)
    at = curve.set_index(["sigma", "radius"])["certified_accuracy"]
    assert at[("0.25", 0.3)] == 0.5  # radius == r counts
    assert at[("0.25", 0.31)] == 0.25
    assert at[("0.50", 1.2)] == 0.25 and at[("0.50", 0.41)] == 0.5
    assert at[(BEST, 0.45)] == max(at[("0.25", 0.45)], at[("0.50", 0.45)]) == 0.5
    assert at[(BEST, 0.0)] == 0.75
    band = curve.set_index(["sigma", "radius"])[["ci_low", "ci_high"]]
    assert band.loc[("0.25", 0.31)].tolist() == pytest.approx(exact(1, 4))
    assert band.loc[(BEST, 1.2)].tolist() == pytest.approx(exact(1, 4))
    assert band.loc[("0.25", 1.2)].tolist() == pytest.approx(exact(0, 4))


def test_a_coarser_grid_keeps_whole_hundredths():
    curve = curve_table(hand_made_results(), max_radius=1.0, step=0.05, **LEVEL)
    best = curve[curve["sigma"] == BEST]
    assert best["radius"].tolist() == [k / 20 for k in range(25)]  # up to 1.2, exactly
    histories = metric_histories(summary_table(hand_made_results(), RADII, **INTERVALS), curve)
    steps = [p["step"] for p in histories["report/certified_accuracy_vs_radius_x100/best"]]
    assert steps == list(range(0, 121, 5))
    with pytest.raises(ValueError, match=r"step must be a positive multiple of 0\.01"):
        curve_table(hand_made_results(), 1.0, step=0.015, **LEVEL)


def test_metric_names_and_values():
    table = summary_table(hand_made_results(), RADII, **INTERVALS)
    flat = flat_metrics(table)
    assert flat["sigma_0.25/r_0.50"] == 0.25 and flat["best/r_1.00"] == 0.25
    assert flat["acr/sigma_0.50"] == pytest.approx(0.625)
    assert flat["abstain_rate/sigma_0.25"] == 0.25 and flat["clean_accuracy/sigma_0.50"] == 0.75
    # accuracies at 4 radii for 3 curves, each with its interval; 3 numbers per sigma, and ACR's
    # interval
    assert len(flat) == 3 * 4 * 3 + 2 * (3 + 2)
    assert list(flat)[:3] == [
        "sigma_0.25/r_0.00",
        "sigma_0.25/r_0.00/ci_low",
        "sigma_0.25/r_0.00/ci_high",
    ]
    assert (flat["best/r_0.50/ci_low"], flat["best/r_0.50/ci_high"]) == pytest.approx(exact(2, 4))
    assert flat["sigma_0.25/r_1.00/ci_low"] == 0.0
    acr = table.set_index("sigma").loc["0.50", ["acr_ci_low", "acr_ci_high"]].tolist()
    assert [flat["acr/sigma_0.50/ci_low"], flat["acr/sigma_0.50/ci_high"]] == acr

    histories = metric_histories(table, curve_table(hand_made_results(), 1.0, **LEVEL))
    curve = "report/certified_accuracy_vs_radius_x100/"  # its step is the radius x 100
    scalars = {k: v for k, v in histories.items() if not k.startswith(curve)}
    assert scalars.keys() == {
        f"report/{k}" if "/r_" not in k else f"report/certified_accuracy/{k}" for k in flat
    }  # the same numbers under report/, accuracies under report/certified_accuracy/
    assert scalars["report/certified_accuracy/best/r_0.50"] == {"value": 0.5, "step": 0}
    assert scalars["report/certified_accuracy/best/r_0.50/ci_high"]["value"] == pytest.approx(
        exact(2, 4)[1]
    )
    assert scalars["report/acr/sigma_0.25"] == {"value": pytest.approx(0.225), "step": 0}
    assert scalars["report/acr/sigma_0.25/ci_low"]["value"] == flat["acr/sigma_0.25/ci_low"]
    for name in ("sigma_0.25", "sigma_0.50", "best"):
        history = histories[f"{curve}{name}"]
        assert [point["step"] for point in history] == list(range(121))  # radius in hundredths
    sigma_25 = {p["step"]: p["value"] for p in histories[f"{curve}sigma_0.25"]}
    assert sigma_25[30] == 0.5 and sigma_25[31] == 0.25 and sigma_25[61] == 0.0


def chart_sections(names) -> list[str]:
    """The MLflow UI's chart sections of these metric names, in the order it shows them: the name
    up to its last "/", sorted; names without one go to "Model metrics", shown after the rest."""
    sections = {name.rpartition("/")[0] or "Model metrics" for name in names}
    return sorted(sections - {"Model metrics"}) + sorted(sections & {"Model metrics"})


def test_the_report_metrics_come_after_the_training_curves_in_the_mlflow_ui():
    table = summary_table(hand_made_results(), RADII, **INTERVALS)
    report = metric_histories(table, curve_table(hand_made_results(), 1.0, **LEVEL))
    assert all(name.startswith("report/") for name in report)
    training = ["pretrain/train_loss", "cifar_pretrain/lr", "finetune/sigma_0.25/val_noisy_acc"]
    sections = chart_sections([*training, *report])
    assert sections[:3] == ["cifar_pretrain", "finetune/sigma_0.25", "pretrain"]
    assert all(section.startswith("report/") for section in sections[3:])


def test_the_summary_metrics_are_a_few_named_numbers_best_over_sigma():
    table = summary_table(hand_made_results(), RADII, **INTERVALS)
    summary = summary_metrics(table, [0.25, 1.0])
    # best over sigma: sigma 0.5 certifies 3 of 4 images at r = 0.25 and 1 at r = 1; its ACR
    # (0.625) and clean accuracy (0.75) are the larger of the two sigmas'
    assert summary == {
        "best/r_0.25": 0.75,
        "best/r_1.00": 0.25,
        "best/acr": pytest.approx(0.625),
        "best/clean_accuracy": 0.75,
    }


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header rows included, rule rows left out)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ]


def test_markdown_report_shows_percentages_intervals_and_the_published_points():
    table = summary_table(hand_made_results(), RADII, **INTERVALS)
    text = markdown_report(table, "toy", REFERENCE, **INTERVALS)
    assert text.startswith("# Certified accuracy: toy")
    rows = markdown_rows(text)
    assert rows[0] == [
        "sigma", "r = 0.00", "r = 0.25", "r = 0.50", "r = 1.00", "ACR", "abstain (%)", "clean (%)"
    ]  # fmt: skip
    # 3 of 4: [19.4, 99.4], 2 of 4: [6.8, 93.2], 1 of 4: [0.6, 80.6], 0 of 4: [0.0, 60.2]
    three, two, one = "75.0 [19.4, 99.4]", "50.0 [6.8, 93.2]", "25.0 [0.6, 80.6]"
    acr = table.loc[1, ["acr_ci_low", "acr_ci_high"]].tolist()
    acr_cell = f"0.625 [{acr[0]:.3f}, {acr[1]:.3f}]"
    assert ["0.50", three, three, two, one, acr_cell, "25.0", "75.0"] in rows
    assert ["0.25", two, two, one, "0.0 [0.0, 60.2]"] == rows[1][:5]
    assert ["**best**", three, three, two, one, "", "", ""] in rows
    assert rows[-2:] == [["published", "r = 0.25", "r = 0.50"], ["paper", "60.0", "30.0"]]
    prose = " ".join(text.split())
    for said in (
        "95% intervals over the test images",
        "Clopper-Pearson (exact binomial) interval of its count out of 4",
        "BCa bootstrap (500 resamples of the images, seed 0)",
        "cover the choice of test images",
        "for this trained model and these certification settings",
        "the sigma that does best on these same images",
    ):
        assert said in prose, said


def test_samples_per_image_and_the_saving_against_n_max():
    """Sequential results: estimation samples n of at most n_max per image (0 when estimation
    was skipped at selection)."""
    results = hand_made_results().sort_values(["sigma", "idx"])
    results["n"] = [1000, 300, 0, 4000, 100, 200, 300, 1400]
    results["n_max"] = 10_000
    table = summary_table(results, RADII, **INTERVALS).set_index("sigma")
    assert list(table.columns[:7]) == [
        "images", "clean_accuracy", "abstain_rate", "acr", "mean_samples", "median_samples",
        "saving",
    ]  # fmt: skip
    assert table.loc["0.25", ["mean_samples", "median_samples"]].tolist() == [1325, 650]
    assert table.loc["0.50", ["mean_samples", "median_samples"]].tolist() == [500, 250]
    assert table.loc["0.25", "saving"] == pytest.approx(10_000 / 1325)
    assert table.loc["0.50", "saving"] == 20.0 and pd.isna(table.loc[BEST, "saving"])
    flat = flat_metrics(table.reset_index())
    assert flat["mean_samples/sigma_0.50"] == 500 and flat["saving/sigma_0.50"] == 20
    assert flat["median_samples/sigma_0.25"] == 650
    histories = metric_histories(table.reset_index(), curve_table(results, 1.0, **LEVEL))
    assert histories["report/saving/sigma_0.50"] == {"value": 20.0, "step": 0}
    rows = markdown_rows(markdown_report(table.reset_index(), "toy", **INTERVALS))
    assert rows[0][-3:] == ["samples (mean)", "samples (median)", "saving"]
    assert rows[1][-3:] == ["1,325", "650", "7.5x"] and rows[3][-3:] == ["", "", ""]
    assert "Saving: n_max over their mean" in markdown_report(
        table.reset_index(), "toy", **INTERVALS
    )
    # a table without n_max (fixed n, read from elsewhere) has the samples but no saving
    no_n_max = summary_table(results.drop(columns="n_max"), RADII, **INTERVALS)
    assert "mean_samples" in no_n_max and "saving" not in no_n_max


def sequential(results: pd.DataFrame, estimation: list[str]) -> pd.DataFrame:
    """``results`` (sorted by sigma, idx) as a certify run logs them: each image's estimation
    kind, its samples n (0 where skipped) of n_max = 1000."""
    results = results.sort_values(["sigma", "idx"]).assign(estimation=estimation, n_max=1000)
    return results.assign(n=np.where(results["estimation"] == "skipped", 0, 500))


def test_images_skipped_at_selection_are_counted_apart_from_abstentions():
    """stop_at_selection logs a skipped image as predict -1, correct 0: not certified, but no
    abstention of CERTIFY."""
    results = hand_made_results()  # sigma 0.25: image 2 predicts -1; sigma 0.5: image 1
    kinds = ["sequential"] * 8
    kinds[1], kinds[2] = "skipped", "skipped"  # sigma 0.25: image 1 (wrong class) and image 2
    results = sequential(results, kinds)
    results.loc[(results["sigma"] == 0.25) & (results["idx"] == 1), ["predict", "radius"]] = -1, 0
    results.loc[(results["sigma"] == 0.25) & (results["idx"] == 1), "correct"] = 0
    table = summary_table(results, RADII, **INTERVALS).set_index("sigma")
    assert list(table.columns[:5]) == [
        "images", "clean_accuracy", "abstain_rate", "skip_rate", "acr"
    ]  # fmt: skip
    assert table.loc["0.25", ["abstain_rate", "skip_rate"]].tolist() == [0.0, 0.5]
    assert table.loc["0.50", ["abstain_rate", "skip_rate"]].tolist() == [0.25, 0.0]
    assert table.loc["0.25", "clean_accuracy"] == 0.25  # skipped images are not certified
    flat = flat_metrics(table.reset_index())
    assert flat["skip_rate/sigma_0.25"] == 0.5 and flat["abstain_rate/sigma_0.25"] == 0.0
    histories = metric_histories(table.reset_index(), curve_table(results, 1.0, **LEVEL))
    assert histories["report/skip_rate/sigma_0.25"] == {"value": 0.5, "step": 0}
    text = markdown_report(table.reset_index(), "toy", **INTERVALS)
    rows = markdown_rows(text)
    assert rows[0][5:8] == ["ACR", "abstain (%)", "skipped (%)"]
    assert rows[1][6:8] == ["0.0", "50.0"] and rows[2][6:8] == ["25.0", "0.0"]
    assert "Skipped: images whose estimation stopped at selection" in " ".join(text.split())


def test_fixed_n_results_show_no_columns_that_fixed_n_keeps_constant():
    """Fixed-n CERTIFY draws n_max samples for every image and skips none: no samples, saving or
    skip columns in the table, its metrics and the Markdown."""
    results = sequential(hand_made_results(), ["fixed"] * 8).assign(n=1000)
    table = summary_table(results, RADII, **INTERVALS)
    assert list(table.columns[:5]) == ["sigma", "images", "clean_accuracy", "abstain_rate", "acr"]
    assert not {"skip_rate", "mean_samples", "median_samples", "saving"} & set(table.columns)
    assert table["abstain_rate"].tolist()[:2] == [0.25, 0.25]
    header = markdown_rows(markdown_report(table, "toy", **INTERVALS))[0]
    assert header[-3:] == ["ACR", "abstain (%)", "clean (%)"]
    # sequential results keep them
    kept = summary_table(sequential(hand_made_results(), ["sequential"] * 8), RADII, **INTERVALS)
    assert {"skip_rate", "mean_samples", "median_samples", "saving"} <= set(kept.columns)


def test_plot_has_a_curve_and_band_per_sigma_the_envelope_and_the_reference(tmp_path):
    curve = curve_table(hand_made_results(), 1.0, **LEVEL)
    figure = plot_curves(curve, "toy", REFERENCE, **LEVEL)
    axes = figure.axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    assert labels == ["sigma_0.25", "sigma_0.50", "best over sigma"]  # as in every table
    envelope = axes.get_lines()[2]
    assert envelope.get_linestyle() == "--" and envelope.get_ydata()[0] == 0.75
    *bands, published = axes.collections
    assert published.get_label() == "paper"
    # one band per sigma (the envelope's is the band of the sigma it follows), in its colour
    assert len(bands) == 2
    for band, line, sigma in zip(bands, axes.get_lines(), ["0.25", "0.50"], strict=False):
        assert band.get_facecolor()[0][:3] == pytest.approx(to_rgb(line.get_color()))
        y = band.get_paths()[0].vertices[:, 1]
        ends = curve.loc[curve["sigma"] == sigma, ["ci_low", "ci_high"]]
        assert (y.min(), y.max()) == pytest.approx((ends["ci_low"].min(), ends["ci_high"].max()))
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[-1] == "95% Clopper-Pearson band (test images)"
    figure.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_that_do_not_compare_are_refused():
    results = hand_made_results()
    with pytest.raises(ValueError, match=r"lack the columns \['radius'\]"):
        summary_table(results.drop(columns="radius"), RADII, **INTERVALS)
    with pytest.raises(ValueError, match="no rows"):
        curve_table(results.iloc[:0], 1.0, **LEVEL)
    with pytest.raises(ValueError, match=r"sigma \['0.50'\] cover other images"):
        summary_table(
            results[~((results["sigma"] == 0.5) & (results["idx"] == 3))], RADII, **INTERVALS
        )
    with pytest.raises(ValueError, match="repeat"):
        summary_table(pd.concat([results, results.iloc[:1]]), RADII, **INTERVALS)


def test_labels_keep_two_decimals_and_every_digit_needed():
    assert [format_value(v) for v in (0.25, 0.5, 1.0, 0.125, 3)] == [
        "0.25", "0.50", "1.00", "0.125", "3.00",
    ]  # fmt: skip


def test_the_summary_radii_are_radii_of_the_table():
    params = {"dataset": "toy", "radii": [0.0, 0.5, 1.0]}
    assert ReportParams.model_validate({**params, "summary_radii": [0.5]}).summary_radii == [0.5]
    message = "report.summary_radii: expected radii of report.radii [0.0, 0.5, 1.0], got [0.25]"
    with pytest.raises(ParamsError, match=re.escape(message)):
        ReportParams.model_validate({**params, "summary_radii": [0.25]})


def test_the_interval_parameters_are_checked_and_default_to_95_percent():
    minimal = {"dataset": "toy", "radii": [0.0], "summary_radii": [0.0]}
    params = ReportParams.model_validate(minimal)
    assert (params.confidence, params.bootstrap, params.bootstrap_seed) == (0.95, 2000, 0)
    for key, value, message in [
        ("confidence", 1.0, "report.confidence: Input should be less than 1, got 1.0"),
        ("confidence", 0.0, "report.confidence: Input should be greater than 0, got 0.0"),
        ("bootstrap", 0, "report.bootstrap: Input should be greater than 0, got 0"),
        ("bootstrap_seed", -1, "report.bootstrap_seed: Input should be greater than or equal"),
    ]:
        with pytest.raises(ParamsError, match=re.escape(message)):
            ReportParams.model_validate({**minimal, key: value})


# --- the Clopper-Pearson interval -------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.8, 0.999])
def test_clopper_pearson_is_scipys_exact_binomial_interval(confidence):
    for n in (1, 2, 7, 359, 10_000):
        k = np.arange(n + 1) if n < 1000 else np.array([0, 1, 17, 5000, 9999, 10_000])
        low, high = clopper_pearson(k, n, confidence)
        expected = np.array([exact(int(i), n, confidence) for i in k])
        np.testing.assert_allclose(low, expected[:, 0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(high, expected[:, 1], rtol=1e-9, atol=1e-12)


def test_a_mean_count_lies_between_its_whole_neighbours():
    """The comparison's mean count over seeds: the interval moves monotonically with the count,
    and a count a rounding error past an end is that end."""
    low, high = clopper_pearson(np.array([2.0, 2.5, 3.0]), 4, 0.95)
    assert low[0] < low[1] < low[2] and high[0] < high[1] < high[2]
    assert clopper_pearson(4 + 1e-12, 4, 0.95) == pytest.approx(exact(4, 4))
    assert clopper_pearson(-1e-12, 4, 0.95) == pytest.approx(exact(0, 4))


def exact_coverage(n: int, p: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """P(the interval holds p) over k ~ Binomial(n, p), for every p: the sum of the binomial
    probabilities of the counts whose interval holds p."""
    k = np.arange(n + 1)
    low, high = clopper_pearson(k, n, confidence)
    holds = (low[None, :] <= p[:, None]) & (p[:, None] <= high[None, :])
    return (stats.binom.pmf(k[None, :], n, p[:, None]) * holds).sum(axis=1)


def test_the_interval_holds_every_proportion_with_at_least_its_probability():
    p = np.linspace(0.0005, 0.9995, 2000)
    for n in (4, 50, 359):
        assert exact_coverage(n, p).min() >= 0.95 - 1e-9


# Test sets of n images, each certified with probability p: the share of TRIALS test sets whose
# interval holds p. FLOOR: 95% less 3 binomial standard errors over TRIALS.
CASES = [(20, 0.5), (50, 0.03), (100, 0.9), (359, 0.22), (1000, 0.6), (1000, 0.01)]
TRIALS = 20_000
FLOOR = 0.95 - 3 * math.sqrt(0.95 * 0.05 / TRIALS)  # 0.9454


def simulated_coverage(interval) -> list[float]:
    rng = np.random.default_rng(2024)
    coverage = []
    for n, p in CASES:
        k = rng.binomial(n, p, TRIALS)
        low, high = interval(k, n)
        coverage.append(float(np.mean((low <= p) & (p <= high))))
    return coverage


def clopper_pearson_95(k, n):
    return clopper_pearson(k, n, 0.95)


def ninety_percent(k, n):
    """WRONG: the 90% interval, presented as the 95% one."""
    return clopper_pearson(k, n, 0.9)


def wald(k, n):
    """WRONG: the normal approximation, too narrow near 0 and 1 and on few images."""
    share = k / n
    half = stats.norm.ppf(0.975) * np.sqrt(share * (1 - share) / n)
    return share - half, share + half


def test_95_percent_intervals_hold_the_true_proportion_at_least_95_percent_of_the_time():
    assert min(simulated_coverage(clopper_pearson_95)) >= FLOOR


@pytest.mark.parametrize("wrong", [ninety_percent, wald])
def test_the_coverage_check_catches_a_too_narrow_interval(wrong):
    assert min(simulated_coverage(wrong)) < FLOOR


# --- the ACR interval ---------------------------------------------------------------------------
#
# Per-image certified radii (0 for a wrong or abstained image) as a model at sigma 0.25 with
# n = 10,000 gives them: 30% wrong, 28% at the largest certifiable radius (0.8), the rest spread
# evenly below it. TRUE_ACR is their expectation.

TRUE_ACR = 0.28 * 0.8 + 0.42 * 0.4
ACR_TRIALS = 1000
ACR_FLOOR = 0.95 - 3 * math.sqrt(0.95 * 0.05 / ACR_TRIALS)  # 0.929


def radii_of_a_test_set(rng: np.random.Generator, images: int) -> np.ndarray:
    kind, spread = rng.random(images), rng.random(images) * 0.8
    return np.where(kind < 0.3, 0.0, np.where(kind < 0.58, 0.8, spread))


def acr_coverage(interval) -> float:
    rng = np.random.default_rng(7)
    held = 0
    for trial in range(ACR_TRIALS):
        low, high = interval(radii_of_a_test_set(rng, 100), 0.95, 500, trial)
        held += low <= TRUE_ACR <= high
    return held / ACR_TRIALS


def without_replacement(values, confidence, resamples, seed):
    """WRONG: draws the images without replacement, so every resample is the test set itself."""
    draws = np.random.default_rng(seed).permuted(np.tile(values, (resamples, 1)), axis=1)
    means = draws.mean(axis=1)
    tail = (1 - confidence) / 2
    return tuple(np.quantile(means, [tail, 1 - tail]))


def eighty_percent(values, confidence, resamples, seed):
    """WRONG: the 80% interval, presented as the asked one."""
    return bootstrap_mean(values, 0.8, resamples, seed)


def test_acr_intervals_hold_the_true_acr_at_their_nominal_rate():
    assert ACR_FLOOR <= acr_coverage(bootstrap_mean) <= 0.95 + (0.95 - ACR_FLOOR)


@pytest.mark.parametrize("wrong", [without_replacement, eighty_percent])
def test_the_acr_coverage_check_catches_a_too_narrow_interval(wrong):
    assert acr_coverage(wrong) < ACR_FLOOR


def test_the_acr_interval_is_scipys_bca_seeded_and_draws_the_same_images_for_every_sigma():
    values = radii_of_a_test_set(np.random.default_rng(0), 50)
    interval = bootstrap_mean(values, 0.9, 300, 7)
    scipys = stats.bootstrap(
        (values,), np.mean, confidence_level=0.9, n_resamples=300, rng=np.random.default_rng(7)
    ).confidence_interval
    assert interval == pytest.approx((scipys.low, scipys.high))
    assert interval == bootstrap_mean(values, 0.9, 300, 7) != bootstrap_mean(values, 0.9, 300, 8)
    assert interval[0] < values.mean() < interval[1]
    # nothing to resample: one image, or every radius 0
    assert bootstrap_mean([0.3], 0.95, 300, 0) == (0.3, 0.3)
    assert bootstrap_mean(np.zeros(20), 0.95, 300, 0) == (0.0, 0.0)
    # sigma 0.5 certifies the images of sigma 0.25 with twice their radii: the same draws of the
    # images give it twice the interval
    results = hand_made_results().sort_values(["sigma", "idx"])
    results.loc[results["sigma"] == 0.5, ["predict", "radius", "correct"]] = results.loc[
        results["sigma"] == 0.25, ["predict", "radius", "correct"]
    ].to_numpy() * [1, 2, 1]
    table = summary_table(results, RADII, **INTERVALS).set_index("sigma")
    acr = table[["acr_ci_low", "acr_ci_high"]]
    assert acr.loc["0.50"].tolist() == pytest.approx((2 * acr.loc["0.25"]).tolist())
    group = results[results["sigma"] == 0.25]
    assert acr.loc["0.25"].tolist() == pytest.approx(
        bootstrap_mean(group["radius"] * group["correct"], 0.95, 500, 0)
    )
