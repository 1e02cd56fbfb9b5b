"""The pretrain pipeline on the test env, its refusals, and the paper's settings in conf/."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from kedro.config import OmegaConfigLoader
from PIL import Image
from torchvision.transforms import v2

from conftest import PROJECT_ROOT, copy_project, run_kedro
from dmae_pipeline.data import build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import build_dmae, export_pretrained, load_pretrained
from dmae_pipeline.pipelines.pretrain.nodes import check_params, dmae_config
from dmae_pipeline.training import peak_lr, validate_cfg

MODELS = "data/06_models/pretrain"
CIFAR_STATS = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}
IMAGENET_STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def tracking_uri(project) -> str:
    """An absolute store per project: mlflow caches stores by URI, so the default relative
    sqlite:///mlflow.db would keep pointing at the first project's database in this process."""
    return f"sqlite:///{project / 'mlflow.db'}"


def run_metric(project, key: str) -> tuple[list[float], list[str]]:
    """The per-epoch values of ``key`` in the first MLflow run of ``project`` that logged it,
    and that run's figure artifacts."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(project))
    runs = client.search_runs(
        [client.get_experiment_by_name("dmae_pipeline").experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    run = next(r for r in runs if key in r.data.metrics)
    history = client.get_metric_history(run.info.run_id, key)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    return [m.value for m in sorted(history, key=lambda m: m.step)], artifacts


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy where data_prep and pretrain ran once on the test env."""
    project = copy_project(tmp_path_factory.mktemp("pretrain") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri(project))
        run_kedro(project, "data_prep,pretrain", "test")
        yield project


@pytest.mark.slow
def test_pretrain_writes_a_checkpoint_an_export_and_a_figure(project, tmp_path):
    checkpoint = safe_torch_load(project / MODELS / "dmae.pt")
    assert set(checkpoint) == {"model", "config", "epoch"} and checkpoint["epoch"] == 3
    config = checkpoint["config"]
    assert config["in_chans"] == 1 and config["img_size"] == 16 and config["embed_dim"] == 32

    # The export is the released plain format: it loads completely and equals export_pretrained.
    model = build_dmae(**config)
    assert load_pretrained(model, project / MODELS / "dmae_pretrained.pth") == ([], [])
    export_pretrained(model, tmp_path / "reference.pth")
    exported = safe_torch_load(project / MODELS / "dmae_pretrained.pth")
    reference = safe_torch_load(tmp_path / "reference.pth")
    assert exported.keys() == reference.keys() == checkpoint["model"].keys()
    assert all(torch.equal(exported[k], checkpoint["model"][k]) for k in exported)

    with Image.open(project / "data/08_reporting/pretrain_reconstruction.png") as png:
        assert png.format == "PNG" and min(png.size) > 100

    losses, artifacts = run_metric(project, "pretrain/train_loss")
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert artifacts == ["figures/pretrain_reconstruction.png"]


@pytest.mark.slow
def test_a_finished_run_is_resumed_not_retrained(project):
    last = project / MODELS / "run/last.pt"
    stamp, before = last.stat().st_mtime_ns, safe_torch_load(project / MODELS / "dmae.pt")
    run_kedro(project, "pretrain", "test")
    after = safe_torch_load(project / MODELS / "dmae.pt")
    assert last.stat().st_mtime_ns == stamp  # no epoch ran
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


BAD_PARAMS = [
    ({"model": {"patch_size": 5}}, r"pretrain\.model: patch_size=5 must divide img_size=16"),
    ({"model": {"mask_ratio": 1.0}}, r"pretrain\.model: mask_ratio must be in \[0, 1\)"),
    ({"model": {"sigma": -0.1}}, r"pretrain\.model: sigma must be >= 0"),
    ({"model": {"in_chans": 3}}, r"pretrain\.model: \['in_chans'\] come from the dataset spec"),
    ({"train": {"epochs": 0}}, r"pretrain\.train: cfg\['epochs'\]"),
    ({"augment": {"flip": True}}, r"pretrain: augment has unknown keys \['flip'\]"),
    ({"epochs": 3}, r"pretrain: unknown keys \['epochs'\]"),
    # A checkpoint of another model in run_dir is never resumed.
    ({"model": {"embed_dim": 64}}, r"pretrain\.run_dir: .*model\.embed_dim: 32 -> 64"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("params", "message"), BAD_PARAMS)
def test_bad_parameters_stop_before_training(project, params, message):
    written = [project / MODELS / name for name in ("dmae.pt", "run/last.pt", "run/run.json")]
    stamps = [path.stat().st_mtime_ns for path in written]
    with pytest.raises(ValueError, match=message):
        run_kedro(project, "pretrain", "test", params={"pretrain": params})
    assert [path.stat().st_mtime_ns for path in written] == stamps


@pytest.mark.slow
def test_without_resume_a_changed_model_starts_over(project):
    params = {"pretrain": {"model": {"sigma": 0.5}, "train": {"resume": False}}}
    run_kedro(project, "pretrain", "test", params=params)
    checkpoint = safe_torch_load(project / MODELS / "dmae.pt")
    assert checkpoint["config"]["sigma"] == 0.5 and checkpoint["epoch"] == 3
    record = json.loads((project / MODELS / "run/run.json").read_text())
    assert record["model"] == checkpoint["config"] and record["init"] is None


def env_parameters(env: str) -> dict:
    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local", env=env
    )
    return loader["parameters"]


def encoder_size(params: dict, spec: dict) -> tuple[dict, int]:
    """The DMAE the parameters describe, built on the meta device (no memory, no training):
    its config and its encoder's parameter count."""
    with torch.device("meta"):
        model = build_dmae(**dmae_config(spec, params["model"]))
    encoder = (
        p for name, p in model.named_parameters() if not name.startswith(("decoder_", "mask_"))
    )
    return model.config, sum(p.numel() for p in encoder)


def vit_b_16(config: dict) -> bool:
    return (
        config["img_size"] == 224
        and config["patch_size"] == 16
        and (config["embed_dim"], config["depth"], config["num_heads"]) == (768, 12, 12)
        and (config["decoder_embed_dim"], config["decoder_depth"]) == (512, 8)
        and config["decoder_num_heads"] == 16
        and (config["sigma"], config["mask_ratio"]) == (0.25, 0.75)
        and config["norm_pix_loss"]
        and config["loss_on"] == "all"
    )


def test_imagenet_env_has_the_papers_pretraining():
    params = env_parameters("imagenet")
    spec = {"source": "imagefolder", "image_size": 224, "channels": 3, **IMAGENET_STATS}
    pretrain = check_params(params["pretrain"], "pretrain")
    config, encoder = encoder_size(pretrain, spec)
    assert vit_b_16(config) and 85e6 < encoder < 87.5e6
    cfg = validate_cfg(pretrain["train"])
    assert (cfg["epochs"], cfg["warmup_epochs"], cfg["blr"]) == (1100, 40, 1.5e-4)
    assert cfg["batch_size"] * cfg["accum_iter"] == 4096
    assert peak_lr(cfg["blr"], cfg["batch_size"], cfg["accum_iter"]) == pytest.approx(2.4e-3)
    assert (cfg["weight_decay"], cfg["betas"], cfg["amp"]) == (0.05, [0.9, 0.95], "auto")
    crop, flip = build_transform(spec, train=True, augment=pretrain["augment"]).transforms[:2]
    assert isinstance(crop, v2.RandomResizedCrop) and isinstance(flip, v2.RandomHorizontalFlip)
    assert tuple(crop.size) == (224, 224) and crop.scale == (0.2, 1.0)
    assert crop.interpolation == v2.InterpolationMode.BICUBIC
    # Continued pretraining is a CIFAR-10 step: off here, with a message saying so.
    with pytest.raises(ValueError, match="not configured in this environment"):
        check_params(params["cifar_pretrain"], "cifar_pretrain")


def test_cifar10_env_continues_from_the_released_imagenet_model():
    params = env_parameters("cifar10")
    spec = {"source": "cifar10", "image_size": 32, "channels": 3, **CIFAR_STATS}
    cifar = check_params(params["cifar_pretrain"], "cifar_pretrain")
    assert cifar["init"] == "data/01_raw/dmae_base_sigma_0.25_mask_0.75_1100e.pth"
    config, encoder = encoder_size(cifar, spec)
    assert vit_b_16(config) and 85e6 < encoder < 87.5e6
    assert config["mean"] == CIFAR_STATS["mean"]  # the dataset's statistics, not ImageNet's
    cfg = validate_cfg(cifar["train"])
    assert (cfg["epochs"], cfg["warmup_epochs"], cfg["blr"]) == (50, 10, 5e-5)
    assert cfg["batch_size"] * cfg["accum_iter"] == 512 and cfg["weight_decay"] == 0.05
    assert cifar["augment"] == {"hflip": True}
    # pretrain, should it run in this env, has the ImageNet recipe.
    pretrain = check_params(params["pretrain"], "pretrain")
    assert vit_b_16(encoder_size(pretrain, spec)[0])
    imagenet = env_parameters("imagenet")["pretrain"]
    assert pretrain["train"] | {"num_workers": 0} == imagenet["train"] | {"num_workers": 0}
