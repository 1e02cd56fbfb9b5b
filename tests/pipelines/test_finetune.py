"""The finetune pipeline: a run on conf/test after the DMAE stages, the initialization sources,
model selection on the validation split only, bad parameters, and the paper's environments."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from conftest import PROJECT_ROOT, copy_project, run_kedro
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import (
    build_classifier,
    build_dmae,
    export_finetuned,
    export_pretrained,
    load_pretrained,
)
from dmae_pipeline.pipelines.finetune import create_pipeline
from dmae_pipeline.pipelines.finetune.nodes import (
    _check_params,
    _classifier_config,
    finetune_classifiers,
)
from dmae_pipeline.training import accuracy_evaluator, load_best, load_checkpoint

pytestmark = pytest.mark.slow

TEST_PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/test/parameters_finetune.yml").read_text())
# One sigma, one epoch, no image augmentation: the runs below only check where weights come from.
QUICK = {
    "sigmas": [0.5],
    "consistency": {"eta": 0.1},
    "augment": {"random_resized_crop": None, "hflip": False, "rand_augment": None},
    "train": {"epochs": 1, "resume": False},
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
    entry = yaml.safe_load((project / "conf/base/catalog_finetune.yml").read_text())
    catalog = DataCatalog.from_config({"finetuned_models": entry["finetuned_models"]})
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
            "table": pd.read_csv(project / "data/08_reporting/finetune_validation.csv"),
        }
        yield project, outputs


def test_one_selected_classifier_per_sigma(chain, tmp_path):
    project, outputs = chain
    spec, _, val_split = model_input(project)
    init = safe_torch_load(project / "data/06_models/cifar_pretrain/dmae.pt")
    models = outputs["models"]
    assert sorted(models) == ["sigma_0.25", "sigma_0.5"]  # run_sigma_*/ files are no partitions
    val_set = SplitDataset(val_split, build_transform(spec, train=False))
    for name, sigma in (("sigma_0.25", 0.25), ("sigma_0.5", 0.5)):
        part = models[name]
        assert set(part) == {"model", "config", "sigma", "epoch", "val", "init"}
        assert part["sigma"] == sigma and part["init"] == "cifar_pretrain"
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
    assert table["sigma"].tolist() == [0.25, 0.5]
    for row in table.itertuples():
        part = models[f"sigma_{row.sigma}"]
        assert (row.epoch, row.clean_acc, row.noisy_acc) == (
            part["epoch"], part["val"]["clean_acc"], part["val"]["noisy_acc"]
        )  # fmt: skip


def test_epoch_metrics_reach_mlflow(chain):
    from mlflow.tracking import MlflowClient

    project, _ = chain
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = next(
        r
        for r in client.search_runs(experiments)
        if "finetune/sigma_0.25/val_noisy_acc" in r.data.metrics
    )
    for metric in ("train_loss", "val_clean_acc", "val_noisy_acc"):
        steps = client.get_metric_history(run.info.run_id, f"finetune/sigma_0.5/{metric}")
        assert [m.step for m in steps] == [1, 2]


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
    assert sorted(finetuned_models(project)) == ["sigma_0.25", "sigma_0.5"]


def test_init_from_scratch_and_from_a_released_file(chain, tmp_path):
    project, _ = chain
    params = merged(QUICK, {"init": {"from": "scratch"}, "model": TINY_ENCODER})
    run_kedro(project, "finetune", "test", params={"finetune": params})
    part = finetuned_models(project)["sigma_0.5"]
    assert part["init"] == "scratch" and part["config"]["img_size"] == 16

    # A released pretrained file (plain state dict, no config): the architecture comes from
    # finetune.model. Layer decay 1e-6 freezes the first block, so it must be the file's.
    dmae = build_dmae(**TINY_ENCODER, in_chans=1, mean=[0.5], std=[0.25], decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    released = tmp_path / "dmae_tiny_released.pth"
    export_pretrained(dmae, released)
    params = merged(params, {"init": {"from": str(released)}, "layer_decay": 1e-6})
    run_kedro(project, "finetune", "test", params={"finetune": params})
    part = finetuned_models(project)["sigma_0.5"]
    assert part["init"] == str(released)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        torch.testing.assert_close(part["model"][key], dmae.state_dict()[key], atol=1e-5, rtol=0)


def node_inputs(project, tmp_path, **update):
    spec, train_split, val_split = model_input(project)
    params = merged(TEST_PARAMS["finetune"], {"run_dir": str(tmp_path / "runs"), **update})
    checkpoint = safe_torch_load(project / "data/06_models/cifar_pretrain/dmae.pt")
    return dict(
        dataset_spec=spec,
        train_split=train_split,
        val_split=val_split,
        pretrained_model=None,
        cifar_pretrained_model=checkpoint,
        params=params,
    )


@pytest.mark.parametrize(
    ("update", "error", "message"),
    [
        ({"sigmas": []}, ValueError, r"finetune\.sigmas: expected a non-empty list"),
        ({"sigmas": [0.25, -0.5]}, ValueError, r"finetune\.sigmas: .* > 0"),
        ({"consistency": {"m": 0}}, ValueError, r"finetune\.consistency\.m: expected an integer"),
        ({"consistency": {"eta": [0.5]}}, ValueError, r"finetune\.consistency\.eta: .* one per"),
        ({"num_classes": 3}, ValueError, r"finetune\.num_classes: .* dataset's 10 classes"),
        ({"init": {"from": "no/such.pth"}}, FileNotFoundError, r"no/such\.pth does not exist"),
        ({"init": {"from": "pretrain"}}, FileNotFoundError, r"--pipelines=pretrain"),
        ({"init": {"from": "scratch"}}, ValueError, r"finetune\.model\.preset: needed"),
        ({"model": {"mean": [0.5]}}, ValueError, r"finetune\.model\.mean: set by the dataset"),
        ({"model": {"embed_dim": 64}}, ValueError, r"has shape .* but the model expects"),
        ({"layer_decay": 0}, ValueError, r"finetune\.layer_decay"),
        ({"train": {"batch_size": 63}}, ValueError, r"finetune\.train\.batch_size: .* even"),
        ({"extra": 1}, ValueError, r"finetune: unknown keys \['extra'\]"),
    ],
)
def test_bad_input_stops_before_training(chain, tmp_path, update, error, message):
    inputs = node_inputs(chain[0], tmp_path, **update)
    with pytest.raises(error, match=message):
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
        ValueError, match=r"run_sigma_0\.25 holds a run with other finetune settings \(loss\)"
    ):
        run_kedro(project, "finetune", "test", params={"finetune": {"consistency": {"lam": 1.0}}})


PAPER_SPECS = {
    "cifar10": {"name": "cifar10", "source": "cifar10", "num_classes": 10, "image_size": 32,
                "channels": 3, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]},
    "imagenet": {"name": "imagenet", "source": "imagefolder", "num_classes": 1000,
                 "image_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225]},
}  # fmt: skip


@pytest.mark.parametrize("env", ["cifar10", "imagenet"])
def test_paper_settings_load_and_build_a_vit_b(env):
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env=env, env=env
    )
    params = loader["parameters"]["finetune"]
    spec = PAPER_SPECS[env]
    s = _check_params(params, spec)
    assert s["sigmas"] == [0.25, 0.5, 1.0]
    assert [(k["m"], k["lam"], k["eta"]) for k in s["loss"]] == [
        (2, 2.0, 0.5), (2, 2.0, 0.5), (2, 2.0, 0.1)
    ]  # fmt: skip
    train = s["train"]
    assert (train["blr"], s["layer_decay"], train["weight_decay"]) == (5e-4, 0.65, 0.05)
    assert s["label_smoothing"] == 0.1 and s["model"] == {"drop_path_rate": 0.1}
    if env == "cifar10":
        assert s["init"] == "cifar_pretrain" and train["epochs"] == 50
        assert train["batch_size"] * train["accum_iter"] == 256
        assert (s["mixup"], s["cutmix"]) == (0, 0) and s["augment"] == {"hflip": True}
    else:
        assert s["init"] == "pretrain" and train["epochs"] == 100
        assert train["batch_size"] * train["accum_iter"] == 1024
        assert (train["warmup_epochs"], train["min_lr"]) == (5, 1e-6)
        assert (s["mixup"], s["cutmix"]) == (0.8, 1.0)
        assert s["augment"]["rand_augment"] == "rand-m9-mstd0.5-inc1"
    build_transform(spec, train=True, augment=s["augment"])
    with torch.device("meta"):
        dmae_config = build_dmae("base", img_size=224).config
        model = build_classifier(**_classifier_config(dmae_config, s["model"], spec, s["init"]))
    assert model.config["img_size"] == 224 and model.config["num_classes"] == spec["num_classes"]
    assert model.config["mean"] == spec["mean"]
    assert 85e6 < sum(p.numel() for p in model.parameters()) < 88e6  # ViT-B/16
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
