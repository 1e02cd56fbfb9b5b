"""`kedro run --pipelines=report` on a hand-made certification table, in a temporary project."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.validation.exceptions import ParameterValidationError

from conftest import run_kedro
from dmae_pipeline.reporting.certification import bootstrap_mean
from reporting.test_certification import exact, markdown_rows

pytestmark = pytest.mark.slow

REPORT_FILES = (
    "certified_accuracy.csv",
    "certified_accuracy.md",
    "certified_accuracy.png",
    "certified_accuracy.json",
    "certified_accuracy_summary.json",
    "certified_accuracy_curve.csv",
)


def mlflow_run(name: str):
    """The project's MLflow run called ``name`` (the cwd is the project) and its client.

    The URI is absolute: MLflow caches a store per URI, so a relative one would reach the
    database of the first project this process ran in."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments) if r.info.run_name == name]
    assert len(runs) == 1, f"expected one MLflow run named {name!r}, got {len(runs)}"
    return client, runs[0]


def artifact_paths(client, run_id: str, folder: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, folder)}


def check_report_outputs(project, run_name: str) -> tuple[pd.DataFrame, dict]:
    """The report files exist and agree with the MLflow metrics of the run ``run_name``; returns
    the summary table and the JSON metrics."""
    folder = project / "data" / "08_reporting"
    assert (folder / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(folder / "certified_accuracy.csv", dtype={"sigma": str})
    metrics = json.loads((folder / "certified_accuracy.json").read_text())
    curve = pd.read_csv(folder / "certified_accuracy_curve.csv", dtype={"sigma": str})
    assert list(curve.columns) == ["sigma", "radius", "certified_accuracy", "ci_low", "ci_high"]
    assert (curve["ci_low"] <= curve["certified_accuracy"]).all()
    assert (curve["certified_accuracy"] <= curve["ci_high"]).all()

    client, run = mlflow_run(run_name)
    logged = run.data.metrics
    for key, value in metrics.items():
        name = f"report/certified_accuracy/{key}" if "/r_" in key else f"report/{key}"
        assert logged[name] == pytest.approx(value), name
    for label, group in curve.groupby("sigma"):
        name = "best" if label == "best" else f"sigma_{label}"
        curve_name = f"report/certified_accuracy_vs_radius_x100/{name}"
        history = client.get_metric_history(run.info.run_id, curve_name)
        # one entry per radius of the grid, step = radius in hundredths
        assert sorted(m.step for m in history) == [round(100 * r) for r in group["radius"]]
        by_step = {m.step: m.value for m in history}
        assert [by_step[round(100 * r)] for r in group["radius"]] == pytest.approx(
            group["certified_accuracy"].tolist()
        )
    assert artifact_paths(client, run.info.run_id, "report") == {
        f"report/{name}" for name in REPORT_FILES if not name.endswith(".json")
    }
    return table, metrics


def write_results(project) -> None:
    """Two sigmas on three images; predict -1 is an abstention."""
    results = pd.DataFrame(
        {
            "sigma": [0.25] * 3 + [1.0] * 3,
            "idx": [0, 5, 10] * 2,
            "label": [1, 2, 3] * 2,
            "predict": [1, -1, 3, 1, 2, 0],
            "radius": [0.4, 0.0, 0.2, 1.5, 0.3, 0.8],
            "correct": [1, 0, 1, 1, 1, 0],
        }
    )
    results.to_csv(project / "data/07_model_output/certification_results.csv", index=False)


def test_report_of_a_hand_made_table(kedro_project):
    write_results(kedro_project)
    intervals = {"confidence": 0.9, "bootstrap": 300, "bootstrap_seed": 4}
    radii = {"radii": [0.0, 0.5, 2.0], "summary_radii": [0.5, 2.0]}
    params = {"report": {**radii, "reference_points": [], **intervals}}
    run_kedro(kedro_project, "report", "test", params=params)

    table, metrics = check_report_outputs(kedro_project, "report @ test")
    assert table["sigma"].tolist() == ["0.25", "1.00", "best"]
    assert table["r_0.00"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert table["r_0.50"].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert table["acr"].tolist()[:2] == pytest.approx([0.2, 0.6])
    assert table["abstain_rate"].tolist()[:2] == pytest.approx([1 / 3, 0.0])
    assert metrics["best/r_2.00"] == 0.0 and metrics["sigma_1.00/r_0.50"] == pytest.approx(1 / 3)
    # DVC's metrics: a few named numbers, best over sigma
    summary = json.loads(
        (kedro_project / "data/08_reporting/certified_accuracy_summary.json").read_text()
    )
    assert summary == {
        "best/r_0.50": pytest.approx(1 / 3),
        "best/r_2.00": 0.0,
        "best/acr": pytest.approx(0.6),
        "best/clean_accuracy": pytest.approx(2 / 3),
    }
    # the intervals at the configured level, seed and resamples
    assert table.loc[2, ["r_0.50_ci_low", "r_0.50_ci_high"]].tolist() == pytest.approx(
        exact(1, 3, 0.9)
    )
    assert [metrics["best/r_0.50/ci_low"], metrics["best/r_0.50/ci_high"]] == pytest.approx(
        exact(1, 3, 0.9)
    )
    acr = bootstrap_mean([1.5, 0.3, 0.0], 0.9, 300, 4)
    assert (metrics["acr/sigma_1.00/ci_low"], metrics["acr/sigma_1.00/ci_high"]) == acr
    markdown = (kedro_project / "data/08_reporting/certified_accuracy.md").read_text()
    two, one, none = (
        f"{100 * k / 3:.1f} [{100 * exact(k, 3, 0.9)[0]:.1f}, {100 * exact(k, 3, 0.9)[1]:.1f}]"
        for k in (2, 1, 0)
    )
    row = ["1.00", two, one, none, f"0.600 [{acr[0]:.3f}, {acr[1]:.3f}]", "0.0", "66.7"]
    assert row in markdown_rows(markdown)
    assert "90% intervals over the test images" in " ".join(markdown.split())
    assert "Published" not in markdown


def test_bad_report_parameters_stop_the_run_and_write_nothing(kedro_project):
    write_results(kedro_project)
    with pytest.raises(ParameterValidationError, match=r"report\.radii: expected increasing"):
        run_kedro(kedro_project, "report", "test", params={"report": {"radii": [0.5, 0.25]}})
    assert [p.name for p in (kedro_project / "data" / "08_reporting").iterdir()] == [".gitkeep"]
    assert (
        mlflow.MlflowClient().search_runs(
            [e.experiment_id for e in mlflow.MlflowClient().search_experiments()]
        )
        == []
    )  # refused before tracking started
