"""The pretrain pipeline on the test env, and its refusals before any training."""

from __future__ import annotations

import json
import multiprocessing

import mlflow
import pytest
import torch
from kedro.validation.exceptions import ParameterValidationError
from PIL import Image

from conftest import copy_project, env_parameters, run_kedro
from dmae_pipeline.io import LockedError, exclusive_lock, safe_torch_load
from dmae_pipeline.models import build_dmae, export_pretrained, load_pretrained
from dmae_pipeline.params import PretrainParams

MODELS = "data/06_models/pretrain"


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
    assert set(checkpoint) == {"model", "config", "epoch", "params", "provenance"}
    assert checkpoint["epoch"] == 3 and checkpoint["provenance"]["init_sha256"] is None
    trained = PretrainParams.model_validate(env_parameters("test")["pretrain"])
    assert checkpoint["params"] == trained.model_dump(mode="json")  # what it was trained with
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
    # refused by Kedro's validation of the block, or by the run-wide checks, before any node
    ({"model": {"patch_size": 5}}, r"pretrain\.model: patch_size=5 must divide img_size=16"),
    ({"model": {"mask_ratio": 0.99}}, r"pretrain\.model: mask_ratio=0\.99 leaves no visible patch"),
    ({"model": {"sigma": -0.1}}, r"pretrain\.model\.sigma: Input should be greater than or equal"),
    ({"model": {"in_chans": 3}}, r"pretrain\.model\.in_chans: unknown key"),
    ({"train": {"epochs": 0}}, r"pretrain\.train\.epochs: Input should be greater than 0"),
    ({"augment": {"flip": True}}, r"pretrain\.augment\.flip: unknown key"),
    ({"epochs": 3}, r"pretrain\.epochs: unknown key; allowed here: init"),
    (None, r"Parameter 'pretrain': value is None but type is not Optional"),
    # A checkpoint of another model in run_dir is never resumed.
    ({"model": {"embed_dim": 64}}, r"run holds a run with other settings .*embed_dim: 32 -> 64"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("params", "message"), BAD_PARAMS)
def test_bad_parameters_stop_before_training(project, params, message):
    written = [project / MODELS / name for name in ("dmae.pt", "run/last.pt", "run/run.json")]
    stamps = [path.stat().st_mtime_ns for path in written]
    with pytest.raises((ValueError, ParameterValidationError), match=message):
        run_kedro(project, "pretrain", "test", params={"pretrain": params})
    assert [path.stat().st_mtime_ns for path in written] == stamps


@pytest.mark.slow
def test_a_bad_setting_with_resume_off_leaves_the_run_folder_alone(project):
    """Validation comes first: the old checkpoint is not deleted for a run that cannot start."""
    written = [project / MODELS / name for name in ("run/last.pt", "run/run.json")]
    stamps = [path.stat().st_mtime_ns for path in written]
    params = {"pretrain": {"train": {"resume": False, "warmup_epochs": 5}}}
    with pytest.raises(ParameterValidationError, match=r"warmup_epochs: must be below epochs"):
        run_kedro(project, "pretrain", "test", params=params)
    assert [path.stat().st_mtime_ns for path in written] == stamps


@pytest.mark.slow
def test_without_resume_a_changed_model_starts_over(project):
    params = {"pretrain": {"model": {"sigma": 0.5}, "train": {"resume": False}}}
    run_kedro(project, "pretrain", "test", params=params)
    checkpoint = safe_torch_load(project / MODELS / "dmae.pt")
    assert checkpoint["config"]["sigma"] == 0.5 and checkpoint["epoch"] == 3
    record = json.loads((project / MODELS / "run/run.json").read_text())
    assert record["model"] == checkpoint["config"] and record["init"] is None


def _hold(lock, ready, release):
    with exclusive_lock(lock, "a test"):
        ready.set()
        release.wait(60)


@pytest.mark.slow
def test_a_second_run_on_the_same_run_folder_stops_at_once(project):
    """Two runs of one stage would interleave their checkpoints: the second is refused."""
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold, args=(project / MODELS / "run/.run.lock", ready, release)
    )
    holder.start()
    stamp = (project / MODELS / "run/last.pt").stat().st_mtime_ns
    try:
        assert ready.wait(60)
        with pytest.raises(
            LockedError, match=rf"pid {holder.pid} on .+, `.+`\) is using the training run"
        ):
            run_kedro(project, "pretrain", "test")
    finally:
        release.set()
        holder.join(60)
    assert (project / MODELS / "run/last.pt").stat().st_mtime_ns == stamp
