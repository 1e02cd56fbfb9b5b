"""`kedro run` as a user types it: a mistake of the user's ends with one line on stderr that names
it and says what to do, without a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_project, env_parameters
from dmae_pipeline.io import atomic_torch_save
from dmae_pipeline.models import build_classifier
from dmae_pipeline.params import DataPrepParams
from dmae_pipeline.pipelines.data_prep.nodes import prepare_dataset

pytestmark = pytest.mark.slow

KEDRO = Path(sys.executable).with_name("kedro")


@pytest.fixture(scope="module")
def project(tmp_path_factory, empty_mlflow_db) -> Path:
    """A project copy with the test env's data, a tiny finetuned model per sigma and a tracking
    database (MLflow logs its creation to stderr)."""
    project = copy_project(tmp_path_factory.mktemp("cli") / "project")
    shutil.copy(empty_mlflow_db, project / "mlflow.db")
    spec, *splits = prepare_dataset(
        DataPrepParams.model_validate(env_parameters("test")["data_prep"])
    )
    (project / "data/05_model_input/dataset_spec.json").write_text(json.dumps(spec))
    for name, split in zip(("train", "val", "test"), splits, strict=True):
        atomic_torch_save(split, project / f"data/05_model_input/{name}.pt")
    for sigma in (0.25, 0.5):
        model = build_classifier(
            "pico", 10, img_size=16, patch_size=4, in_chans=1, mean=spec["mean"], std=spec["std"]
        )
        checkpoint = {"model": model.state_dict(), "config": model.config, "sigma": sigma}
        atomic_torch_save(checkpoint, project / f"data/06_models/finetune/sigma_{sigma:.2f}.pt")
    return project


def refusal(project: Path, *args: str) -> str:
    """The one line a refused `kedro run <args>` writes to stderr."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    done = subprocess.run(
        [str(KEDRO), "run", *args], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env=nope"], r"--env=nope: no env named 'nope'; the envs are cifar10, compare, "),
        (["--env=test", "--pipelines=certfy"], r"no pipeline named 'certfy'; did you mean certify"),
        (
            ["--env=compare", "--pipelines=compare", "--params=compare.variant=dmea"],
            # the first of the keys that name the variant (which one: the config files' order)
            r"[\w.]+: its interpolation names compare\.variants\.dmea\.\w+, but "
            r"compare\.variants has no key 'dmea' \(its keys: scratch, mae, dmae\); check the "
            r"values given with --params",
        ),
        (
            ["--env=test", "--pipelines=certify", "--params=certify.log_dir=/proc/nope"],
            r"certify\.log_dir: cannot create /proc/nope \(No such file or directory\); name a "
            r"folder",
        ),
    ],
)
def test_a_mistake_is_one_line(project, args, message):
    line = refusal(project, *args)
    assert line.startswith("Error: ") and re.search(message, line), line


def test_a_model_of_another_sigma_is_one_line(project):
    models = project / "data/06_models/finetune"
    right = (models / "sigma_0.25.pt").read_bytes()
    (models / "sigma_0.25.pt").write_bytes((models / "sigma_0.50.pt").read_bytes())
    try:
        line = refusal(project, "--env=test", "--pipelines=certify")
    finally:
        (models / "sigma_0.25.pt").write_bytes(right)
    assert line == (
        "Error: finetuned_models partition 'sigma_0.25' holds a model finetuned at sigma 0.5, "
        "not 0.25 (finetune.sigmas): name its file sigma_0.50.pt"
    )


def test_a_comparison_without_runs_lists_the_commands_that_make_them(project):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    done = subprocess.run(
        [str(KEDRO), "run", "--env=compare", "--pipelines=compare"],
        cwd=project, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    first, *commands = done.stderr.strip().splitlines()
    assert first == (
        "Error: the comparison lacks the certification results of 9 of its 9 runs; run them with"
    )
    assert commands[0].strip() == (
        "kedro run --env=compare --pipelines=finetune,certify,report "
        "--params=compare.variant=scratch,compare.seed=0"
    )
    assert len(commands) == 9


def test_a_run_folder_of_other_settings_is_one_line_that_says_how_to_go_on(project):
    """A finetune with resume off, stopped before it came to sigma 0.5, leaves that sigma's
    folder with an older run's checkpoint; a rerun that resumes says what to delete."""
    run = project / "data/06_models/finetune/run_sigma_0.50"
    run.mkdir()
    (run / "last.pt").write_bytes(b"an older run's checkpoint")
    (run / "run.json").write_text(json.dumps({"loss": {"sigma": 0.5, "m": 4}}))
    scratch = "finetune.init=scratch,finetune.model.preset=pico,finetune.model.img_size=16"
    line = refusal(project, "--env=test", "--pipelines=finetune", f"--params={scratch}")
    assert re.fullmatch(
        r"Error: data/06_models/finetune/run_sigma_0\.50 holds a run with other settings "
        r"\(.*\): .*; delete it to start this run "
        r"over \(other runs still resume\), or turn resume off to start every run over",
        line,
    ), line
    assert not (project / "data/06_models/finetune/run_sigma_0.25/last.pt").exists()
