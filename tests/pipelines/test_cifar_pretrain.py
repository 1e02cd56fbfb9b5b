"""The cifar_pretrain pipeline: continued DMAE pretraining from the pretrain checkpoint or from a
released file, on the test env."""

from __future__ import annotations

import pytest
import torch
from kedro.validation.exceptions import ParameterValidationError
from test_pretrain import run_metric, tracking_uri

from conftest import copy_project, run_kedro
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import PRESETS, build_dmae, export_pretrained, load_pretrained
from dmae_pipeline.models.pos_embed import sincos_pos_embed_2d

pytestmark = pytest.mark.slow

MODELS = "data/06_models/cifar_pretrain"
# The test env's pretrain architecture (conf/test/parameters_pretrain.yml), 16x16 images.
TEST_MODEL = {"preset": "pico", "patch_size": 4, **PRESETS["pico"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy where data_prep, pretrain and cifar_pretrain ran in one session."""
    project = copy_project(tmp_path_factory.mktemp("cifar_pretrain") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri(project))
        run_kedro(project, "data_prep,pretrain,cifar_pretrain", "test")
        yield project


def test_continues_from_the_pretrain_checkpoint(project):
    pretrained = safe_torch_load(project / "data/06_models/pretrain/dmae.pt")
    checkpoint = safe_torch_load(project / MODELS / "dmae.pt")
    config = checkpoint["config"]
    # The architecture comes from the pretrain checkpoint, the rest from the parameters.
    assert {k: config[k] for k in TEST_MODEL} == TEST_MODEL
    assert (config["img_size"], config["sigma"], config["mask_ratio"]) == (32, 0.5, 0.5)
    # The fixed position tables are the exact 8x8 sin-cos tables, not the pretrained 4x4 ones
    # resampled.
    for key in ("pos_embed", "decoder_pos_embed"):
        expected = sincos_pos_embed_2d(pretrained["model"][key].shape[-1], 8)
        assert torch.equal(checkpoint["model"][key], expected)
    model = build_dmae(**config)
    assert load_pretrained(model, project / MODELS / "dmae_pretrained.pth") == ([], [])
    assert (project / "data/08_reporting/cifar_pretrain_reconstruction.png").stat().st_size > 0
    losses, artifacts = run_metric(project, "cifar_pretrain/train_loss")
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "figures/cifar_pretrain_reconstruction.png" in artifacts


def released_file(path, **overrides):
    """A DMAE state dict in the released plain format (no config), 16x16 images, one channel."""
    shape = {"img_size": 16, "in_chans": 1, "mean": [0.3], "std": [0.35]}
    model = build_dmae(**{**TEST_MODEL, **shape, **overrides})
    export_pretrained(model, path)
    return model


def test_from_a_released_file_without_any_pretrain_output(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    with pytest.raises(FileNotFoundError, match=r"cifar_pretrain\.init is pretrain, but the"):
        run_kedro(kedro_project, "cifar_pretrain", "test")
    path = kedro_project / "data/01_raw/released.pth"
    released = released_file(path)
    init = {"cifar_pretrain": {"init": str(path)}}
    # A released file carries no config: the parameters must give the architecture.
    with pytest.raises(ParameterValidationError, match=r"cifar_pretrain\.model\.preset: needed"):
        run_kedro(kedro_project, "cifar_pretrain", "test", params=init)
    init["cifar_pretrain"]["model"] = {"preset": "pico", "patch_size": 4}
    run_kedro(kedro_project, "cifar_pretrain", "test", params=init)
    assert not (kedro_project / "data/06_models/pretrain").exists()
    checkpoint = safe_torch_load(kedro_project / MODELS / "dmae.pt")
    assert checkpoint["config"]["img_size"] == 32 and checkpoint["epoch"] == 3
    expected = sincos_pos_embed_2d(released.pos_embed.shape[-1], 8)
    assert torch.equal(checkpoint["model"]["pos_embed"], expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 64}, r"cifar_pretrain\.init \(.*released\.pth\): .* has shape"),
        ({"depth": 3}, r"cifar_pretrain\.init \(.*\): .*has 3 'blocks' but the model has 2"),
        ({"decoder_depth": 2}, r"has 2 'decoder_blocks' but the model has 1: another depth"),
    ],
)
def test_an_init_file_of_another_size_is_refused_before_training(
    project, tmp_path, overrides, message
):
    path = tmp_path / "released.pth"
    released_file(path, **overrides)
    params = {"cifar_pretrain": {"init": str(path), "model": {"preset": "pico"}}}
    last = project / MODELS / "run/last.pt"
    stamp = last.stat().st_mtime_ns
    with pytest.raises(ValueError, match=message):
        run_kedro(project, "cifar_pretrain", "test", params=params)
    assert last.stat().st_mtime_ns == stamp


def test_a_missing_init_file_is_named(project, tmp_path):
    params = {"cifar_pretrain": {"init": str(tmp_path / "nowhere.pth")}}
    with pytest.raises(
        ParameterValidationError, match=r"cifar_pretrain\.init: .*nowhere\.pth does"
    ):
        run_kedro(project, "cifar_pretrain", "test", params=params)
