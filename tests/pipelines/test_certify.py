"""`kedro run --pipelines=certify,report` on tiny finetuned models, in a temporary project."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
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
from dmae_pipeline.params import DataPrepParams, ParamsError
from dmae_pipeline.pipelines.data_prep.nodes import prepare_dataset
from dmae_pipeline.smoothing import (
    LOG_COLUMNS,
    IncompleteCertificationError,
    SequentialTest,
    lower_confidence_bound,
    read_log,
    shard_indices,
)
from dmae_pipeline.training import DataMismatchError, provenance

pytestmark = pytest.mark.slow

CONSTANT_CLASS = 5  # the label of 2 of the 5 selected test images
LOGS = Path("data/07_model_output/certify")
RESULTS = Path("data/07_model_output/certification_results.csv")
RADII = [0.0, 0.25, 0.5, 1.0]  # conf/test/parameters_report.yml
TORCHRUN = Path(sys.executable).with_name("torchrun")


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


def sorted_rows(path: Path) -> list[list[str]]:
    """A log's rows, split, without the wall-clock column, by idx (sequential CERTIFY writes them
    in the order the images finish)."""
    time_column = LOG_COLUMNS.index("time")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return sorted(
        (row[:time_column] + row[time_column + 1 :] for row in rows), key=lambda r: int(r[0])
    )


def results(project: Path) -> pd.DataFrame:
    return pd.read_csv(project / RESULTS).drop(columns="time")


def selected_test_images(project: Path, **kwargs) -> list[int]:
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    return shard_indices(spec["split_sizes"]["test"], **{"skip": 7, "max_images": 5, **kwargs})


def constant_certificate(mode: str) -> tuple[int, float]:
    """The samples and radius of every image for the constant classifier at sigma 0.25 (nA = n):
    n = 50 and Clopper-Pearson's bound, or the first look of the sequential test at which n
    successes settle every radius, and the test's bound."""
    if mode == "fixed":
        return 50, 0.25 * norm.ppf(lower_confidence_bound(50, 50, 0.001))
    test = SequentialTest(50, 0.001, 0.25, RADII)
    n = next(look for look in test.looks if test.settled(look, look))
    return n, 0.25 * norm.ppf(test.lower(n, n))


@pytest.mark.parametrize("mode", ["sequential", "fixed"])
def test_certify_then_report(project, mode):
    run_kedro(project, "certify,report", "test", params=certify_params(mode=mode))

    selected = selected_test_images(project)
    files = logs(project)
    assert [name.split("-")[0] for name in files] == ["sigma_0.25", "sigma_0.50"]
    for path in files.values():
        assert path.read_text().split("\n", 1)[0] == "\t".join(LOG_COLUMNS)
        assert sorted(read_log(path)["idx"].tolist()) == selected

    table = pd.read_csv(project / RESULTS)
    assert list(table.columns) == ["sigma", *LOG_COLUMNS]
    assert table["sigma"].tolist() == [0.25] * 5 + [0.5] * 5
    assert table["idx"].tolist() == selected * 2
    assert (table["estimation"] == mode).all() and (table["n_max"] == 50).all()
    labels = safe_torch_load(project / "data/05_model_input/test.pt")["labels"]
    assert table["label"].tolist() == [int(labels[i]) for i in selected] * 2
    # the constant classifier: nA = n on every image, so every image gets the same certificate
    constant = table[table["sigma"] == 0.25]
    n, radius = constant_certificate(mode)
    assert (constant["predict"] == CONSTANT_CLASS).all()
    assert (constant["nA"] == n).all() and (constant["n"] == n).all()
    assert constant["radius"].tolist() == pytest.approx([radius] * 5)
    assert (
        constant["correct"].tolist() == (constant["label"] == CONSTANT_CLASS).astype(int).tolist()
    )

    summary, metrics = check_report_outputs(project, "certify+report @ test")
    assert summary["sigma"].tolist() == ["0.25", "0.50", "best"]
    accuracy = (constant["label"] == CONSTANT_CLASS).mean()
    assert metrics["sigma_0.25/r_0.00"] == metrics["sigma_0.25/r_0.25"] == pytest.approx(accuracy)
    assert metrics["sigma_0.25/r_0.50"] == 0.0  # 0.25 * 1.13 < 0.5
    markdown = (project / "data/08_reporting/certified_accuracy.md").read_text()
    client, run = mlflow_run("certify+report @ test")
    if mode == "fixed":  # n = n_max for every image: no samples, saving or skip columns
        assert not [k for k in metrics if k.startswith(("mean_samples", "saving", "skip_rate"))]
        assert "samples (mean)" not in markdown and "skipped (%)" not in markdown
    else:
        assert metrics["mean_samples/sigma_0.25"] == metrics["median_samples/sigma_0.25"] == n
        assert metrics["saving/sigma_0.25"] == pytest.approx(50 / n)
        noisy = table.loc[table["sigma"] == 0.5, "n"]
        assert metrics["mean_samples/sigma_0.50"] == pytest.approx(noisy.mean())
        assert "samples (mean)" in markdown and f"{50 / n:.1f}x" in markdown
        assert run.data.metrics["report/saving/sigma_0.25"] == pytest.approx(50 / n)
    assert artifact_paths(client, run.info.run_id, "certification") == {
        "certification/certification_results.csv"
    }
    # certify reads finetune.sigmas alone, so the run tracks no other finetune parameter
    assert [key for key in run.data.params if key.startswith("finetune.")] == ["finetune.sigmas"]


@pytest.mark.parametrize("mode", ["sequential", "fixed"])
def test_interrupted_certification_resumes_to_the_uninterrupted_rows(project, mode):
    run_kedro(project, "certify", "test", params=certify_params(mode=mode, max_images=2))
    first = {name: read_log(path) for name, path in logs(project).items()}
    assert all(len(log["idx"]) == 2 for log in first.values())
    noisy = next(path for name, path in logs(project).items() if name.startswith("sigma_0.50"))
    with noisy.open("a") as f:  # a run killed while writing its next row
        f.write("14\t2\t")

    run_kedro(project, "certify", "test", params=certify_params(mode=mode))
    resumed = logs(project)
    assert resumed.keys() == first.keys()
    for name, path in resumed.items():
        log = read_log(path)
        assert len(log["idx"]) == 5
        # the first rows were not certified again: their times are the first run's
        assert log["time"].tolist()[:2] == first[name]["time"].tolist()
    resumed_rows = {name: sorted_rows(path) for name, path in resumed.items()}
    resumed_results = results(project)

    shutil.rmtree(project / LOGS)
    run_kedro(project, "certify", "test", params=certify_params(mode=mode))
    assert {name: sorted_rows(path) for name, path in logs(project).items()} == resumed_rows
    pd.testing.assert_frame_equal(results(project), resumed_results)


def test_shards_merge_to_the_unsharded_results(project):
    two_shards = certify_params(num_shards=2, shard_index=0)
    incomplete = (
        r"sigma_0\.25: the certification of 2 shard\(s\) is incomplete \(shard 1 lacks 2 of 2\)"
    )
    with pytest.raises(IncompleteCertificationError, match=incomplete):
        run_kedro(project, "certify", "test", params=two_shards)
    shard_0 = [name for name in logs(project) if name.endswith("shard_0_of_2.tsv")]
    assert len(shard_0) == 2  # shard 0 was certified before the merge refused
    run_kedro(project, "certify", "test", params=certify_params(num_shards=2, shard_index=1))
    for partition in ("sigma_0.25", "sigma_0.50"):
        shards = [
            sorted(read_log(path)["idx"].tolist())
            for name, path in logs(project).items()
            if name.startswith(f"{partition}-") and "_of_2" in name
        ]
        assert shards == [[0, 14, 28], [7, 21]]
    sharded = results(project)

    # an unsharded run finds every image in the shards' logs: it certifies none again
    run_kedro(project, "certify", "test")
    unsharded_logs = [path for name, path in logs(project).items() if "shard_0_of_1" in name]
    assert len(unsharded_logs) == 2 and all(len(read_log(p)["idx"]) == 0 for p in unsharded_logs)
    pd.testing.assert_frame_equal(results(project), sharded)
    shutil.rmtree(project / LOGS)
    run_kedro(project, "certify", "test")
    pd.testing.assert_frame_equal(results(project), sharded)

    # an incomplete shard (here: more images selected than were certified) is refused
    with pytest.raises(IncompleteCertificationError, match=r"incomplete \(shard 1 lacks 2 of 4\)"):
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


def test_logs_of_other_settings_are_never_resumed(project):
    """A log's name carries the mode, the sequential test's radii and stop_at_selection: a run
    with other ones starts new logs; the radii leave fixed-n logs alone."""
    count = 0
    other_radii = {"radii": [0.0, 0.5], "summary_radii": [0.5]}
    sequential = {"mode": "sequential"}
    for certify, report, new_logs in [
        ({}, {}, 2),
        ({}, other_radii, 0),
        (sequential, {}, 2),
        (sequential, other_radii, 2),
        ({**sequential, "stop_at_selection": True}, {}, 2),
        ({"batch_size": 10}, {}, 0),
    ]:
        params = {"certify": {"max_images": 1, **certify}, **({"report": report} if report else {})}
        run_kedro(project, "certify", "test", params=params)
        count += new_logs
        assert len(logs(project)) == count, params


def test_stop_at_selection_skips_the_images_selection_gets_wrong(project):
    params = certify_params(mode="sequential", stop_at_selection=True)
    run_kedro(project, "certify,report", "test", params=params)
    table = pd.read_csv(project / RESULTS)
    constant = table[table["sigma"] == 0.25]  # it selects CONSTANT_CLASS on every image
    wrong = constant["label"] != CONSTANT_CLASS
    assert 0 < wrong.sum() < 5
    assert (constant["estimation"] == wrong.map({True: "skipped", False: "sequential"})).all()
    assert (constant.loc[wrong, ["n", "nA", "predict", "correct"]] == [0, 0, -1, 0]).all().all()
    summary = pd.read_csv(
        project / "data/08_reporting/certified_accuracy.csv", dtype={"sigma": str}
    )
    assert summary.loc[0, "r_0.00"] == pytest.approx(1 - wrong.mean())
    # skipped images are no abstentions: the constant classifier never abstains
    assert summary.loc[0, ["abstain_rate", "skip_rate"]].tolist() == [0.0, wrong.mean()]


def test_bad_inputs_stop_before_any_work(project):
    with pytest.raises(ParameterValidationError, match=r"certify\.n0: Input should be greater"):
        run_kedro(project, "certify", "test", params=certify_params(n0=0))
    with pytest.raises(ParameterValidationError, match=r"certify\.stop_at_selection: applies to"):
        run_kedro(
            project, "certify", "test", params=certify_params(mode="fixed", stop_at_selection=True)
        )
    # finetune.sigmas, which certify alone reads here, is checked as the finetune block's
    with pytest.raises(ParamsError, match=r"finetune\.sigmas: expected distinct noise levels"):
        run_kedro(project, "certify", "test", params={"finetune": {"sigmas": [0.25, 0.25]}})
    checkpoint = safe_torch_load(project / "data/06_models/finetune/sigma_0.50.pt")
    checkpoint["config"]["num_classes"] = 7
    atomic_torch_save(checkpoint, project / "data/06_models/finetune/sigma_0.50.pt")
    with pytest.raises(ValueError, match=r"'sigma_0\.50' is a classifier with num_classes=7, not"):
        run_kedro(project, "certify", "test")
    assert not (project / LOGS).exists()


def test_models_of_other_splits_are_not_certified(project):
    """A model trained before data_prep split the data again (another seed) may have trained on
    today's test images: certify refuses it, naming both splits, and certifies nothing."""
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    for path in (project / "data/06_models/finetune").glob("*.pt"):
        atomic_torch_save({**safe_torch_load(path), "provenance": provenance(spec, None)}, path)
    run_kedro(project, "certify", "test", params=certify_params(max_images=1))  # same splits
    shutil.rmtree(project / LOGS)
    run_kedro(project, "data_prep", "test", params={"data_prep": {"seed": 5}})
    new = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    old_test, new_test = spec["split_digests"]["test"][:12], new["split_digests"]["test"][:12]
    assert old_test != new_test
    message = (
        rf"partition 'sigma_0\.25' was trained on other splits \(.*test {old_test}.*\) than the "
        rf"current ones \(.*test {new_test}.*\).*cannot certify it"
    )
    with pytest.raises(DataMismatchError, match=message):
        run_kedro(project, "certify,report", "test")
    assert not (project / LOGS).exists()


def test_a_model_of_another_sigma_or_other_pixel_statistics_is_refused(project):
    models = project / "data/06_models/finetune"
    shutil.copy(models / "sigma_0.50.pt", models / "sigma_0.25.pt")
    message = r"'sigma_0\.25' holds a model finetuned at sigma 0\.5, not 0\.25 \(finetune\.sigmas\)"
    with pytest.raises(ValueError, match=message + r": name its file sigma_0\.50\.pt"):
        run_kedro(project, "certify", "test")
    checkpoint = safe_torch_load(models / "sigma_0.50.pt")
    checkpoint["config"]["mean"] = [0.5]
    atomic_torch_save({**checkpoint, "sigma": 0.25}, models / "sigma_0.25.pt")
    with pytest.raises(ValueError, match=r"'sigma_0\.25' is a classifier with mean=\[0\.5\], not"):
        run_kedro(project, "certify", "test")
    assert not (project / LOGS).exists()


def public_keys(depth: int) -> set[str]:
    """The state dict names of the public DMAE code's classifier, models_vit.VisionTransformer
    with global pooling (timm's ViT with fc_norm in place of norm)."""
    block = [f"{layer}.{p}" for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1",
                                          "mlp.fc2") for p in ("weight", "bias")]  # fmt: skip
    return {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            *(f"blocks.{i}.{name}" for i in range(depth) for name in block),
            "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}  # fmt: skip


def test_public_dmae_checkpoints_are_certified_as_they_are(project):
    """Files saved by the public code's finetuning scripts, renamed sigma_<sigma>.pt, certify
    without training to the certificates of the same weights in the pipeline's format."""
    spec = json.loads((project / "data/05_model_input/dataset_spec.json").read_text())
    models, public = project / "data/06_models/finetune", {}
    for partition, sigma in (("sigma_0.25", 0.25), ("sigma_0.50", 0.5)):
        torch.manual_seed(int(sigma * 100))
        model = build_classifier(
            "pico", spec["num_classes"], img_size=16, patch_size=4, in_chans=1,
            mean=spec["mean"], std=spec["std"],
        )  # fmt: skip
        with torch.no_grad():
            model.head.weight.normal_(std=1.0)
        state = model.state_dict()
        assert set(state) == public_keys(depth=2)
        checkpoint = {"model": state, "config": model.config, "sigma": sigma, "epoch": 1}
        atomic_torch_save(checkpoint, models / f"{partition}.pt")
        optimizer = torch.optim.AdamW(model.parameters())
        args = argparse.Namespace(model="vit_pico_patch4", sigma=sigma, nb_classes=10,
                                  input_size=16, global_pool=True, blr=5e-4)  # fmt: skip
        public[partition] = {
            "model": {name: state[name].clone() for name in sorted(public_keys(depth=2))},
            "optimizer": optimizer.state_dict(),
            "epoch": 99,
            "scaler": torch.amp.GradScaler("cpu").state_dict(),
            "args": args,
        }
    run_kedro(project, "certify", "test")
    ours = results(project)
    for partition, checkpoint in public.items():
        torch.save(checkpoint, models / f"{partition}.pt")  # as the public scripts save
    run_kedro(project, "certify", "test", params=certify_params(log_dir=str(project / "public")))
    assert len(list((project / "public").glob("*.tsv"))) == 2  # certified, not resumed
    pd.testing.assert_frame_equal(results(project), ours)
    # args.sigma names the noise level; a file of another one is refused
    public["sigma_0.25"]["args"].sigma = 0.5
    torch.save(public["sigma_0.25"], models / "sigma_0.25.pt")
    with pytest.raises(ValueError, match=r"'sigma_0\.25' holds a model finetuned at sigma 0\.5,"):
        run_kedro(project, "certify", "test")


def test_only_the_configured_sigmas_are_certified(project):
    """A model left from an earlier, longer sigma list is neither certified nor reported."""
    write_model(project, "sigma_1.00", 1.0, constant=True, seed=3)
    run_kedro(project, "certify,report", "test", params=certify_params(max_images=1))
    assert sorted(name.split("-")[0] for name in logs(project)) == ["sigma_0.25", "sigma_0.50"]
    assert pd.read_csv(project / RESULTS)["sigma"].tolist() == [0.25, 0.5]
    with pytest.raises(FileNotFoundError, match=r"finetuned_models has no sigma_0\.75"):
        run_kedro(project, "certify", "test", params={"finetune": {"sigmas": [0.25, 0.75]}})


@pytest.mark.parametrize("mode", ["sequential", "fixed"])
def test_torchrun_certification_equals_one_process(project, mode):
    """`torchrun --nproc_per_node=2 -m kedro run --pipelines=certify`: each process certifies
    every other image of the selection into its own logs, and the merged table equals a
    one-process run's row for row."""
    run_kedro(project, "certify", "test", params=certify_params(mode=mode))
    one_process = results(project)
    shutil.rmtree(project / LOGS)
    (project / RESULTS).unlink()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "kedro", "run"]
    done = subprocess.run(
        [*command, "--pipelines=certify", "--env=test", f"--params=certify.mode={mode}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for partition in ("sigma_0.25", "sigma_0.50"):
        shares = {
            name.rsplit("-", 1)[1]: sorted(read_log(path)["idx"].tolist())
            for name, path in logs(project).items()
            if name.startswith(f"{partition}-")
        }
        assert shares == {"rank_0_of_2.tsv": [0, 14, 28], "rank_1_of_2.tsv": [7, 21]}
    pd.testing.assert_frame_equal(results(project), one_process)
