"""The finetune pipeline: a run on conf/test after the DMAE stages, the initialization sources,
model selection on the validation split only, bad parameters, and the paper's environments."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from mlflow.tracking import MlflowClient

from conftest import copy_project, env_parameters, run_kedro
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import (
    build_classifier,
    build_dmae,
    export_finetuned,
    export_pretrained,
    load_pretrained,
)
from dmae_pipeline.params import FinetuneParams
from dmae_pipeline.pipelines.finetune import create_pipeline
from dmae_pipeline.pipelines.finetune.nodes import finetune_classifiers
from dmae_pipeline.settings import CONFIG_LOADER_ARGS
from dmae_pipeline.training import (
    DataMismatchError,
    accuracy_evaluator,
    load_best,
    load_checkpoint,
    provenance,
)

pytestmark = pytest.mark.slow

TEST_PARAMS = env_parameters("test")["finetune"]
# One sigma, one epoch, no image augmentation: the runs below only check where weights come from.
QUICK = {
    "sigmas": [0.5],
    "consistency": {"eta": 0.1},
    "augment": {"random_resized_crop": None, "hflip": False, "rand_augment": None},
    "train": {"epochs": 1, "warmup_epochs": 0, "resume": False},
}
TINY_ENCODER = {"preset": "tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                "num_heads": 2}  # fmt: skip


def merged(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def finetuned_models(project) -> dict:
    """The finetuned_models partitions, read through the catalog entry."""
    loader = OmegaConfigLoader(str(project / "conf"), env="test", **CONFIG_LOADER_ARGS)
    entry = loader["catalog"]["finetuned_models"]
    entry = {**entry, "path": str(project / entry["path"])}
    catalog = DataCatalog.from_config({"finetuned_models": entry})
    return {name: load() for name, load in catalog.load("finetuned_models").items()}


def model_input(project) -> tuple[dict, dict, dict]:
    folder = project / "data/05_model_input"
    spec = json.loads((folder / "dataset_spec.json").read_text())
    return spec, safe_torch_load(folder / "train.pt"), safe_torch_load(folder / "val.pt")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The test env's data_prep -> pretrain -> cifar_pretrain -> finetune, run once."""
    project = copy_project(tmp_path_factory.mktemp("finetune") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        run_kedro(project, "data_prep,pretrain,cifar_pretrain,finetune", "test")
        outputs = {
            "models": finetuned_models(project),
            "table": pd.read_csv(
                project / "data/08_reporting/finetune_validation.csv", dtype={"sigma": str}
            ),
        }
        yield project, outputs


def test_one_selected_classifier_per_sigma(chain, tmp_path):
    project, outputs = chain
    spec, _, val_split = model_input(project)
    init = safe_torch_load(project / "data/06_models/cifar_pretrain/dmae.pt")
    models = outputs["models"]
    assert sorted(models) == ["sigma_0.25", "sigma_0.50"]  # run_sigma_*/ files are no partitions
    val_set = SplitDataset(val_split, build_transform(spec, train=False))
    for name, sigma in (("sigma_0.25", 0.25), ("sigma_0.50", 0.5)):
        part = models[name]
        assert set(part) == {
            "model",
            "config",
            "sigma",
            "epoch",
            "val",
            "init",
            "params",
            "provenance",
        }
        assert part["sigma"] == sigma and part["init"] == "cifar_pretrain"
        assert part["params"] == FinetuneParams.model_validate(TEST_PARAMS).model_dump(mode="json")
        assert part["provenance"] == provenance(spec, init["model"])
        assert init["provenance"]["splits"] == spec["split_digests"]
        config = part["config"]
        assert config["num_classes"] == 10 and config["in_chans"] == 1
        assert config["mean"] == spec["mean"] and config["std"] == spec["std"]
        assert config["img_size"] == init["config"]["img_size"] == 32  # the DMAE's resolution
        assert config["embed_dim"] == init["config"]["embed_dim"]
        assert config["drop_path_rate"] == 0.1
        model = build_classifier(**config)
        model.load_state_dict(part["model"])  # strict: the config rebuilds the classifier
        export_finetuned(model, tmp_path / f"{name}.pth", epoch=part["epoch"])  # released format
        released = safe_torch_load(tmp_path / f"{name}.pth")
        assert set(released) == {"model", "epoch", "args"}
        assert load_pretrained(build_classifier(**config), released) == ([], [])
        assert not torch.equal(part["model"]["blocks.1.mlp.fc2.weight"],
                               init["model"]["blocks.1.mlp.fc2.weight"])  # fmt: skip

        # The kept epoch is the best by noisy validation accuracy, and that accuracy is the
        # validation split's: recomputed here from the saved weights, it is the same number.
        run_dir = project / "data/06_models/finetune" / f"run_{name}"
        history = load_checkpoint(run_dir / "last.pt")["history"]
        assert [h["epoch"] for h in history] == [1, 2]
        assert part["val"]["noisy_acc"] == max(h["val_noisy_acc"] for h in history)
        assert load_best(run_dir / "best.pt")["best"]["epoch"] == part["epoch"]
        evaluate = accuracy_evaluator(val_set, sigma=sigma, batch_size=128, seed=0)
        recomputed = evaluate(model)
        assert recomputed == pytest.approx(part["val"], abs=1.5 / len(val_set))
    table = outputs["table"]
    assert list(table.columns) == ["sigma", "epoch", "clean_acc", "noisy_acc"]
    assert table["sigma"].tolist() == ["0.25", "0.50"]  # as every table writes a sigma
    for row in table.itertuples():
        part = models[f"sigma_{row.sigma}"]
        assert (row.epoch, row.clean_acc, row.noisy_acc) == (
            part["epoch"], part["val"]["clean_acc"], part["val"]["noisy_acc"]
        )  # fmt: skip


def test_epoch_metrics_reach_mlflow(chain):
    project, _ = chain
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = next(
        r
        for r in client.search_runs(experiments)
        if "finetune/sigma_0.25/val_noisy_acc" in r.data.metrics
    )
    for metric in ("train_loss", "val_clean_acc", "val_noisy_acc"):
        steps = client.get_metric_history(run.info.run_id, f"finetune/sigma_0.50/{metric}")
        assert [m.step for m in steps] == [1, 2]


def test_mlflow_logs_what_the_certified_models_were_trained_with(chain, capsys):
    """A certify run logs the training parameters that its checkpoints record, not the current
    finetune block, which it does not execute; and it ends with the certified accuracies."""
    project, _ = chain
    overrides = {"finetune": {"train": {"epochs": 99, "blr": 0.5}}}
    run_kedro(project, "certify,report", "test", params=overrides)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, "tags.pipelines = 'certify,report'")
    params = run.data.params
    assert not {"finetune.train.epochs", "finetune.train.blr"} & set(params)
    for name in ("sigma_0.25", "sigma_0.50"):
        assert params[f"trained.finetune.{name}.train.epochs"] == "2"
        assert params[f"trained.finetune.{name}.train.blr"] == "0.01"
    assert "runtime_params" not in run.data.tags
    assert params["certify.n"] == str(env_parameters("test")["certify"]["n"])  # the current block
    out = capsys.readouterr().out
    assert "Certified accuracy, best over sigma" in out
    assert "Report:  " in out and "certified_accuracy.md" in out
    assert f"MLflow run {run.info.run_id}" in out


def test_test_split_never_reaches_model_selection(chain):
    project, _ = chain
    assert "test_split" not in create_pipeline().all_inputs()
    # A test split that cannot be read: the pipeline runs without touching it.
    test_file = project / "data/05_model_input/test.pt"
    saved = test_file.read_bytes()
    test_file.write_bytes(b"poison: not a torch file")
    try:
        run_kedro(project, "finetune", "test", params={"finetune": QUICK})
    finally:
        test_file.write_bytes(saved)
    assert sorted(finetuned_models(project)) == ["sigma_0.25", "sigma_0.50"]


def test_init_from_scratch_and_from_a_released_file(chain, tmp_path):
    project, _ = chain
    params = merged(QUICK, {"init": "scratch", "model": TINY_ENCODER})
    run_kedro(project, "finetune", "test", params={"finetune": params})
    part = finetuned_models(project)["sigma_0.50"]
    assert part["init"] == "scratch" and part["config"]["img_size"] == 16

    # A released pretrained file (plain state dict, no config): the architecture comes from
    # finetune.model. Layer decay 1e-6 freezes the first block, so it must be the file's.
    dmae = build_dmae(**TINY_ENCODER, in_chans=1, mean=[0.5], std=[0.25], decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    released = tmp_path / "dmae_tiny_released.pth"
    export_pretrained(dmae, released)
    params = merged(params, {"init": str(released), "layer_decay": 1e-6})
    run_kedro(project, "finetune", "test", params={"finetune": params})
    part = finetuned_models(project)["sigma_0.50"]
    assert part["init"] == str(released)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        torch.testing.assert_close(part["model"][key], dmae.state_dict()[key], atol=1e-5, rtol=0)


def node_inputs(project, tmp_path, **update):
    spec, train_split, val_split = model_input(project)
    params = merged(TEST_PARAMS, {"run_dir": str(tmp_path / "runs"), **update})
    checkpoint = safe_torch_load(project / "data/06_models/cifar_pretrain/dmae.pt")
    return dict(
        dataset_spec=spec,
        train_split=train_split,
        val_split=val_split,
        pretrained_model=None,
        cifar_pretrained_model=checkpoint,
        params=FinetuneParams.model_validate(params),
    )


@pytest.mark.parametrize(
    ("update", "error", "message"),
    [
        ({"init": "pretrain"}, FileNotFoundError, r"kedro run --pipelines=pretrain"),
        ({"model": {"embed_dim": 64}}, ValueError, r"finetune\.init \(cifar_pretrain\): .*shape"),
        ({"model": {"patch_size": 5}}, ValueError, r"finetune\.model: patch_size=5 must divide"),
    ],
)
def test_bad_input_stops_before_training(chain, tmp_path, update, error, message):
    inputs = node_inputs(chain[0], tmp_path, **update)
    with pytest.raises(error, match=message):
        finetune_classifiers(**inputs)
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_of_other_splits_is_not_trained_from(chain, tmp_path):
    """After data_prep has split the data again, the cifar_pretrain checkpoint may have seen
    today's test images: finetuning from it is refused, naming both splits."""
    inputs = node_inputs(chain[0], tmp_path)
    spec = inputs["dataset_spec"]
    old = inputs["cifar_pretrained_model"]["provenance"]["splits"]
    spec["split_digests"] = {**old, "test": "0123456789ab" + old["test"][12:]}
    message = (
        rf"finetune\.init \(the cifar_pretrain pipeline's checkpoint\) was trained on other "
        rf"splits \(.*test {old['test'][:12]}.*\) than the current ones \(.*test 0123456789ab"
    )
    with pytest.raises(DataMismatchError, match=message):
        finetune_classifiers(**inputs)
    assert not (tmp_path / "runs").exists()


def test_missing_pipeline_checkpoint_names_the_pipeline(chain, tmp_path):
    inputs = node_inputs(chain[0], tmp_path)
    inputs["cifar_pretrained_model"] = None
    with pytest.raises(FileNotFoundError, match=r"kedro run --pipelines=cifar_pretrain"):
        finetune_classifiers(**inputs)


def test_changed_settings_do_not_resume_a_finished_run(chain):
    project, _ = chain
    with pytest.raises(
        ValueError, match=r"run_sigma_0\.25 holds a run with other settings \(loss\)"
    ):
        run_kedro(project, "finetune", "test", params={"finetune": {"consistency": {"lam": 1.0}}})
