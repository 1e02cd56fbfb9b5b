"""The scratch / MAE / DMAE comparison as the README runs it, test-sized by runtime parameters:
data_prep, one run per variant (each its own MLflow run, in folders of its own), then the
compare pipeline, in a temporary project."""

from __future__ import annotations

import copy

import mlflow
import pandas as pd
import pytest
from scipy import stats

from conftest import run_kedro
from dmae_pipeline.io import UserError, safe_torch_load

pytestmark = pytest.mark.slow

# conf/compare at the size of conf/test: one seed, a pico ViT, an epoch per stage, six images
TINY = {
    "compare": {"seeds": [0], "bootstrap": 50},
    "pretrain": {
        "model": {"preset": "pico", "embed_dim": 32},
        "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "num_threads": 1},
    },
    "finetune": {"train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "num_threads": 1}},
    "certify": {"n0": 10, "n": 20, "batch_size": 30, "skip": 7, "max_images": 6},
}
PIPELINES = {
    "scratch": "finetune,certify,report",
    "mae": "pretrain,finetune,certify,report",
    "dmae": "pretrain,finetune,certify,report",
}


def train(project, variant: str) -> None:
    params = copy.deepcopy(TINY)
    params["compare"] |= {"variant": variant, "seed": 0}
    run_kedro(project, PIPELINES[variant], "compare", params=params)


def runs(project) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def test_the_variants_train_from_configuration_and_the_comparison_collects_them(kedro_project):
    project = kedro_project
    run_kedro(project, "data_prep", "compare", params=TINY)
    for variant in ("scratch", "mae"):
        train(project, variant)
    with pytest.raises(UserError, match="lacks the certification results of 1 of its 3"):
        run_kedro(project, "compare", "compare", params=TINY)
    train(project, "dmae")
    run_kedro(project, "compare", "compare", params=TINY)

    models = project / "data/06_models/compare"
    assert not (models / "scratch/seed_0/pretrain").exists()
    for variant, sigma, loss_on in [("mae", 0.0, "masked"), ("dmae", 0.25, "all")]:
        config = safe_torch_load(models / variant / "seed_0/pretrain/dmae.pt")["config"]
        assert (config["sigma"], config["loss_on"], config["preset"]) == (sigma, loss_on, "pico")
    for variant, init in [("scratch", "scratch"), ("mae", "pretrain"), ("dmae", "pretrain")]:
        for sigma in ("0.25", "0.50"):
            assert (
                safe_torch_load(models / variant / f"seed_0/finetune/sigma_{sigma}.pt")["init"]
                == init
            )

    # each variant's run is its own MLflow run, logging the settings that make it that variant
    trained = {
        run.data.params["finetune.run_dir"].split("/")[-3]: run.data.params
        for run in runs(project)
        if "finetune.run_dir" in run.data.params
    }
    assert set(trained) == {"scratch", "mae", "dmae"}
    assert trained["scratch"]["finetune.init"] == "scratch"
    assert (trained["mae"]["pretrain.model.sigma"], trained["mae"]["pretrain.model.loss_on"]) == (
        "0.0",
        "masked",
    )
    assert trained["dmae"]["pretrain.model.sigma"] == "0.25"

    reporting = project / "data/08_reporting/compare"
    table = pd.read_csv(reporting / "comparison.csv")
    assert table["variant"].unique().tolist() == ["scratch", "mae", "dmae"]
    assert set(table["seeds"]) == {1} and set(table["images"]) == {6}
    # sequential certification (the env's): at most n = 20 samples per certificate, on average
    # over every run's certificates
    output = project / "data/07_model_output/compare"
    samples = pd.concat(pd.read_csv(p) for p in output.glob("*/seed_0/certification_results.csv"))
    assert len(samples) == 3 * 2 * 6 and samples["n"].max() <= 20
    assert table["samples"].tolist() == pytest.approx([samples["n"].mean()] * len(table))
    # one seed: each variant's interval is the exact one of its count, at compare.confidence
    for row in table.itertuples():
        interval = stats.binomtest(round(row.mean * 6), 6).proportion_ci(0.95, method="exact")
        assert (row.ci_low, row.ci_high) == pytest.approx((interval.low, interval.high))
    gaps = pd.read_csv(reporting / "comparison_gaps.csv")
    assert gaps[["variant", "baseline"]].drop_duplicates().values.tolist() == [
        ["dmae", "mae"], ["dmae", "scratch"], ["mae", "scratch"]
    ]  # fmt: skip
    assert (reporting / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "# Certified accuracy by variant" in (reporting / "comparison.md").read_text()
    (compared,) = [r for r in runs(project) if "dmae/r_0.00/mean" in r.data.metrics]
    assert compared.info.run_name == "compare @ compare"
    assert compared.data.metrics["gap/dmae-mae/r_0.00"] == pytest.approx(
        gaps.loc[(gaps["variant"] == "dmae") & (gaps["baseline"] == "mae"), "gap"].iloc[0]
    )
    dmae = table[(table["variant"] == "dmae") & (table["radius"] == 0.0)].iloc[0]
    assert compared.data.metrics["dmae/r_0.00/ci_high"] == pytest.approx(dmae["ci_high"])
