"""`kedro run --pipelines=certify,report` on tiny finetuned models, in a temporary project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.validation.exceptions import ParameterValidationError
from scipy.stats import norm
from test_report import artifact_paths, check_report_outputs, mlflow_run

from conftest import env_parameters, run_kedro
from dmae_pipeline.io import atomic_torch_save, safe_torch_load
from dmae_pipeline.models import build_classifier
from dmae_pipeline.params import DataPrepParams
from dmae_pipeline.pipelines.data_prep.nodes import prepare_dataset
from dmae_pipeline.smoothing import LOG_COLUMNS, lower_confidence_bound, read_log, shard_indices

pytestmark = pytest.mark.slow

CONSTANT_CLASS = 3
LOGS = Path("data/07_model_output/certify")
RESULTS = Path("data/07_model_output/certification_results.csv")


@pytest.fixture(scope="module")
def model_input(tmp_path_factory) -> Path:
    """The test env's dataset_spec.json and test.pt, made once by the data_prep node."""
    params = DataPrepParams.model_validate(env_parameters("test")["data_prep"])
    spec, _, _, test_split = prepare_dataset(params)
    folder = tmp_path_factory.mktemp("model_input")
    (folder / "dataset_spec.json").write_text(json.dumps(spec))
    atomic_torch_save(test_split, folder / "test.pt")
    return folder


def write_model(project: Path, partition: str, sigma: float, constant: bool, seed: int) -> None:
    """A one-block classifier in the finetune pipeline's partition format. ``constant``: it
    always predicts CONSTANT_CLASS; else a random head that reads the image (and the noise)."""
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    torch.manual_seed(seed)
    model = build_classifier(
        "tiny",
        spec["num_classes"],
        img_size=spec["image_size"],
        patch_size=8,
        in_chans=spec["channels"],
        embed_dim=32,
        depth=1,
        num_heads=2,
        mean=spec["mean"],
        std=spec["std"],
    )
    with torch.no_grad():
        if constant:
            model.head.weight.zero_()
            model.head.bias.zero_()
            model.head.bias[CONSTANT_CLASS] = 1.0
        else:
            model.head.weight.normal_(std=1.0)
    checkpoint = {"model": model.state_dict(), "config": model.config, "sigma": sigma}
    path = project / f"data/06_models/finetune/{partition}.pt"
    atomic_torch_save({**checkpoint, "epoch": 1, "val": {}}, path)


@pytest.fixture
def project(kedro_project, model_input) -> Path:
    shutil.copytree(model_input, kedro_project / "data/05_model_input", dirs_exist_ok=True)
    write_model(kedro_project, "sigma_0.25", 0.25, constant=True, seed=0)
    write_model(kedro_project, "sigma_0.50", 0.5, constant=False, seed=1)
    return kedro_project


def certify_params(**changes) -> dict:
    return {"certify": changes}


def logs(project: Path) -> dict[str, Path]:
    """The certification logs by file name."""
    return {p.name: p for p in sorted((project / LOGS).glob("*.tsv"))}


def without_time(path: Path) -> list[list[str]]:
    """A log's lines, split, without the wall-clock column."""
    time_column = LOG_COLUMNS.index("time")
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [row[:time_column] + row[time_column + 1 :] for row in rows]


def results(project: Path) -> pd.DataFrame:
    return pd.read_csv(project / RESULTS).drop(columns="time")


def test_certify_then_report(project):
    run_kedro(project, "certify,report", "test")

    test_size = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())[
        "split_sizes"
    ]["test"]
    selected = shard_indices(test_size, skip=7, max_images=5)
    files = logs(project)
    assert [name.split("-")[0] for name in files] == ["sigma_0.25", "sigma_0.50"]
    for path in files.values():
        assert path.read_text().split("\n", 1)[0] == "\t".join(LOG_COLUMNS)
        assert read_log(path)["idx"].tolist() == selected

    table = pd.read_csv(project / RESULTS)
    assert list(table.columns) == ["sigma", *LOG_COLUMNS]
    assert table["sigma"].tolist() == [0.25] * 5 + [0.5] * 5
    assert table["idx"].tolist() == selected * 2
    assert (table["n"] == 50).all()
    labels = safe_torch_load(project / "data/05_model_input/test.pt")["labels"]
    assert table["label"].tolist() == [int(labels[i]) for i in selected] * 2
    # the constant classifier: nA = n, so every image gets sigma * Phi^-1(lower bound at n of n)
    constant = table[table["sigma"] == 0.25]
    radius = 0.25 * norm.ppf(lower_confidence_bound(50, 50, 0.001))
    assert (constant["predict"] == CONSTANT_CLASS).all() and (constant["nA"] == 50).all()
    assert constant["radius"].tolist() == pytest.approx([radius] * 5)
    assert (
        constant["correct"].tolist() == (constant["label"] == CONSTANT_CLASS).astype(int).tolist()
    )

    summary, metrics = check_report_outputs(project, "certify+report @ test")
    assert summary["sigma"].tolist() == ["0.25", "0.50", "best"]
    accuracy = (constant["label"] == CONSTANT_CLASS).mean()
    assert metrics["sigma_0.25/r_0.00"] == metrics["sigma_0.25/r_0.25"] == pytest.approx(accuracy)
    assert metrics["sigma_0.25/r_0.50"] == 0.0  # 0.25 * 1.13 < 0.5
    client, run = mlflow_run("certify+report @ test")
    assert artifact_paths(client, run.info.run_id, "certification") == {
        "certification/certification_results.csv"
    }


def test_interrupted_certification_resumes_to_the_uninterrupted_file(project):
    run_kedro(project, "certify", "test", params=certify_params(max_images=2))
    first = {name: read_log(path) for name, path in logs(project).items()}
    assert all(len(log["idx"]) == 2 for log in first.values())
    noisy = next(path for name, path in logs(project).items() if name.startswith("sigma_0.50"))
    with noisy.open("a") as f:  # a run killed while writing its next row
        f.write("14\t2\t")

    run_kedro(project, "certify", "test")
    resumed = logs(project)
    assert resumed.keys() == first.keys()
    for name, path in resumed.items():
        log = read_log(path)
        assert len(log["idx"]) == 5
        # the first rows were not certified again: their times are the first run's
        assert log["time"].tolist()[:2] == first[name]["time"].tolist()
    resumed_rows = {name: without_time(path) for name, path in resumed.items()}
    resumed_results = results(project)

    shutil.rmtree(project / LOGS)
    run_kedro(project, "certify", "test")
    assert {name: without_time(path) for name, path in logs(project).items()} == resumed_rows
    pd.testing.assert_frame_equal(results(project), resumed_results)


def test_shards_merge_to_the_unsharded_results(project):
    run_kedro(project, "certify", "test")
    unsharded = results(project)

    two_shards = certify_params(num_shards=2, shard_index=0)
    with pytest.raises(FileNotFoundError, match=r"sigma_0\.25: no log for shard\(s\) \[1\] of 2"):
        run_kedro(project, "certify", "test", params=two_shards)
    shard_0 = [name for name in logs(project) if name.endswith("shard_0_of_2.tsv")]
    assert len(shard_0) == 2  # shard 0 was certified before the merge refused
    run_kedro(project, "certify", "test", params=certify_params(num_shards=2, shard_index=1))

    for partition in ("sigma_0.25", "sigma_0.50"):
        shards = [
            read_log(path)["idx"].tolist()
            for name, path in logs(project).items()
            if name.startswith(f"{partition}-") and "_of_2" in name
        ]
        assert shards == [[0, 14, 28], [7, 21]]
    pd.testing.assert_frame_equal(results(project), unsharded)

    # an incomplete shard (here: more images selected than were certified) is refused
    with pytest.raises(ValueError, match=r"incomplete \(shard 1 lacks 2 of 4\)"):
        run_kedro(project, "certify", "test", params=certify_params(max_images=8, num_shards=2))


def test_a_retrained_model_is_certified_again(project):
    run_kedro(project, "certify", "test", params=certify_params(max_images=1))
    before = logs(project)
    write_model(project, "sigma_0.50", 0.5, constant=False, seed=2)
    run_kedro(project, "certify", "test", params=certify_params(max_images=1))
    after = logs(project)
    new = sorted(after.keys() - before.keys())
    assert len(new) == 1 and new[0].startswith("sigma_0.50-")  # sigma_0.25's log was reused
    assert pd.read_csv(project / RESULTS)["idx"].tolist() == [0, 0]


def test_bad_inputs_stop_before_any_work(project):
    with pytest.raises(ParameterValidationError, match=r"certify\.n0: Input should be greater"):
        run_kedro(project, "certify", "test", params=certify_params(n0=0))
    checkpoint = safe_torch_load(project / "data/06_models/finetune/sigma_0.50.pt")
    checkpoint["config"]["num_classes"] = 7
    atomic_torch_save(checkpoint, project / "data/06_models/finetune/sigma_0.50.pt")
    with pytest.raises(ValueError, match=r"'sigma_0\.50' is a classifier with num_classes=7, not"):
        run_kedro(project, "certify", "test")
    assert not (project / LOGS).exists()


def test_only_the_configured_sigmas_are_certified(project):
    """A model left from an earlier, longer sigma list is neither certified nor reported."""
    write_model(project, "sigma_1.00", 1.0, constant=True, seed=3)
    run_kedro(project, "certify,report", "test", params=certify_params(max_images=1))
    assert sorted(name.split("-")[0] for name in logs(project)) == ["sigma_0.25", "sigma_0.50"]
    assert pd.read_csv(project / RESULTS)["sigma"].tolist() == [0.25, 0.5]
    with pytest.raises(FileNotFoundError, match=r"finetuned_models has no sigma_0\.75"):
        run_kedro(project, "certify", "test", params={"finetune": {"sigmas": [0.25, 0.75]}})
