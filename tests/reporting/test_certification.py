import numpy as np
import pandas as pd
import pytest

from dmae_pipeline.reporting.certification import (
    BEST,
    curve_table,
    flat_metrics,
    format_value,
    markdown_report,
    metric_histories,
    plot_curves,
    summary_table,
)

RADII = [0.0, 0.25, 0.5, 1.0]
REFERENCE = [{"label": "paper", "radii": [0.25, 0.5], "certified_accuracy": [0.6, 0.3]}]


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
    table = summary_table(hand_made_results(), RADII).set_index("sigma")
    assert list(table.index) == ["0.25", "0.50", BEST]
    assert list(table.columns) == [
        "images", "clean_accuracy", "abstain_rate", "acr", "r_0.00", "r_0.25", "r_0.50", "r_1.00",
    ]  # fmt: skip
    # sigma 0.25: correct images 0 (r 0.3) and 1 (r 0.6); sigma 0.5: 0 (0.9), 2 (0.4), 3 (1.2)
    expected = {
        "0.25": [4, 0.5, 0.25, (0.3 + 0.6) / 4, 0.5, 0.5, 0.25, 0.0],
        "0.50": [4, 0.75, 0.25, (0.9 + 0.4 + 1.2) / 4, 0.75, 0.75, 0.5, 0.25],
    }
    for sigma, values in expected.items():
        np.testing.assert_allclose(table.loc[sigma].to_numpy(dtype=float), values)
    best = table.loc[BEST]
    np.testing.assert_allclose(
        best[["r_0.00", "r_0.25", "r_0.50", "r_1.00"]], [0.75, 0.75, 0.5, 0.25]
    )
    assert best["images"] == 4 and best[["clean_accuracy", "abstain_rate", "acr"]].isna().all()


def test_curve_table_is_exact_on_the_grid():
    curve = curve_table(hand_made_results(), max_radius=1.0)
    assert list(curve.columns) == ["sigma", "radius", "certified_accuracy"]
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


def test_a_coarser_grid_keeps_whole_hundredths():
    curve = curve_table(hand_made_results(), max_radius=1.0, step=0.05)
    best = curve[curve["sigma"] == BEST]
    assert best["radius"].tolist() == [k / 20 for k in range(25)]  # up to 1.2, exactly
    histories = metric_histories(summary_table(hand_made_results(), RADII), curve)
    assert [p["step"] for p in histories["certified_accuracy_curve/best"]] == list(range(0, 121, 5))
    with pytest.raises(ValueError, match=r"step must be a positive multiple of 0\.01"):
        curve_table(hand_made_results(), 1.0, step=0.015)


def test_metric_names_and_values():
    table = summary_table(hand_made_results(), RADII)
    flat = flat_metrics(table)
    assert flat["sigma_0.25/r_0.50"] == 0.25 and flat["best/r_1.00"] == 0.25
    assert flat["acr/sigma_0.50"] == pytest.approx(0.625)
    assert flat["abstain_rate/sigma_0.25"] == 0.25 and flat["clean_accuracy/sigma_0.50"] == 0.75
    assert len(flat) == 3 * 4 + 2 * 3  # accuracies at 4 radii for 3 curves, 3 numbers per sigma

    histories = metric_histories(table, curve_table(hand_made_results(), 1.0))
    scalars = {k: v for k, v in histories.items() if not k.startswith("certified_accuracy_curve/")}
    assert scalars.keys() == {
        k if "/r_" not in k else f"certified_accuracy/{k}" for k in flat
    }  # the same numbers, accuracies under certified_accuracy/
    assert scalars["certified_accuracy/best/r_0.50"] == {"value": 0.5, "step": 0}
    assert scalars["acr/sigma_0.25"] == {"value": pytest.approx(0.225), "step": 0}
    for name in ("sigma_0.25", "sigma_0.50", "best"):
        history = histories[f"certified_accuracy_curve/{name}"]
        assert [point["step"] for point in history] == list(range(121))  # radius in hundredths
    sigma_25 = {p["step"]: p["value"] for p in histories["certified_accuracy_curve/sigma_0.25"]}
    assert sigma_25[30] == 0.5 and sigma_25[31] == 0.25 and sigma_25[61] == 0.0


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header rows included, rule rows left out)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ]


def test_markdown_report_shows_percentages_and_the_published_points():
    text = markdown_report(summary_table(hand_made_results(), RADII), "toy", REFERENCE)
    assert text.startswith("# Certified accuracy: toy")
    rows = markdown_rows(text)
    assert rows[0] == [
        "sigma", "r = 0.00", "r = 0.25", "r = 0.50", "r = 1.00", "ACR", "abstain (%)", "clean (%)"
    ]  # fmt: skip
    assert ["0.50", "75.0", "75.0", "50.0", "25.0", "0.625", "25.0", "75.0"] in rows
    assert ["**best**", "75.0", "75.0", "50.0", "25.0", "", "", ""] in rows
    assert rows[-2:] == [["published", "r = 0.25", "r = 0.50"], ["paper", "60.0", "30.0"]]


def test_samples_per_image_and_the_saving_against_n_max():
    """Sequential results: estimation samples n of at most n_max per image (0 when estimation
    was skipped at selection)."""
    results = hand_made_results().sort_values(["sigma", "idx"])
    results["n"] = [1000, 300, 0, 4000, 100, 200, 300, 1400]
    results["n_max"] = 10_000
    table = summary_table(results, RADII).set_index("sigma")
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
    histories = metric_histories(table.reset_index(), curve_table(results, 1.0))
    assert histories["saving/sigma_0.50"] == {"value": 20.0, "step": 0}
    rows = markdown_rows(markdown_report(table.reset_index(), "toy"))
    assert rows[0][-3:] == ["samples (mean)", "samples (median)", "saving"]
    assert rows[1][-3:] == ["1,325", "650", "7.5x"] and rows[3][-3:] == ["", "", ""]
    assert "saving: n_max over their mean" in markdown_report(table.reset_index(), "toy")
    # a table without n_max (fixed n, read from elsewhere) has the samples but no saving
    no_n_max = summary_table(results.drop(columns="n_max"), RADII)
    assert "mean_samples" in no_n_max and "saving" not in no_n_max


def test_plot_has_a_curve_per_sigma_the_envelope_and_the_reference(tmp_path):
    figure = plot_curves(curve_table(hand_made_results(), 1.0), "toy", REFERENCE)
    axes = figure.axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    assert labels == ["sigma = 0.25", "sigma = 0.50", "best over sigma"]
    envelope = axes.get_lines()[2]
    assert envelope.get_linestyle() == "--" and envelope.get_ydata()[0] == 0.75
    assert [c.get_label() for c in axes.collections] == ["paper"]
    figure.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_that_do_not_compare_are_refused():
    results = hand_made_results()
    with pytest.raises(ValueError, match=r"lack the columns \['radius'\]"):
        summary_table(results.drop(columns="radius"), RADII)
    with pytest.raises(ValueError, match="no rows"):
        curve_table(results.iloc[:0], 1.0)
    with pytest.raises(ValueError, match=r"sigma \['0.50'\] cover other images"):
        summary_table(results[~((results["sigma"] == 0.5) & (results["idx"] == 3))], RADII)
    with pytest.raises(ValueError, match="repeat"):
        summary_table(pd.concat([results, results.iloc[:1]]), RADII)


def test_labels_keep_two_decimals_and_every_digit_needed():
    assert [format_value(v) for v in (0.25, 0.5, 1.0, 0.125, 3)] == [
        "0.25", "0.50", "1.00", "0.125", "3.00",
    ]  # fmt: skip
