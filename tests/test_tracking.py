"""Each `kedro run` is one MLflow run: named after pipelines and env, tagged, FAILED on error;
runs whose process died are ended as KILLED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest
from kedro.validation.exceptions import ParameterValidationError

from conftest import run_kedro

KIND = "mlflow.experimentKind"


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def only_run(project) -> mlflow.entities.Run:
    experiment = client().get_experiment_by_name("dmae_pipeline")
    (run,) = client().search_runs([experiment.experiment_id])
    return run


def test_run_is_named_tagged_and_logs_flattened_parameters(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    run = only_run(kedro_project)
    assert run.info.run_name == "data_prep @ test"
    assert run.info.status == "FINISHED"
    assert run.data.tags["env"] == "test"
    assert run.data.tags["dataset"] == "digits"
    assert run.data.tags["git_commit"]
    assert run.data.tags["host"] == socket.gethostname()
    assert run.data.tags["pid"] == str(os.getpid())  # run_kedro runs in this process
    assert run.data.params["data_prep.source"] == "digits"
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.tags[KIND] == "custom_model_development"


def test_failed_run_is_marked_failed_and_keeps_its_parameters(kedro_project, tmp_path):
    params = {"data_prep": {"source": "cifar10", "image_size": 32, "test_fraction": None,
                            "raw_dir": str(tmp_path / "missing")}}  # fmt: skip
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        run_kedro(kedro_project, "data_prep", "test", params=params)
    run = only_run(kedro_project)
    assert run.info.status == "FAILED"
    assert run.data.params["data_prep.raw_dir"] == str(tmp_path / "missing")


def test_parameters_that_do_not_validate_start_no_run(kedro_project):
    with pytest.raises(ParameterValidationError, match="val_fraction"):
        run_kedro(kedro_project, "data_prep", "test", params={"data_prep": {"val_fraction": 0.99}})
    experiment = client().get_experiment_by_name("dmae_pipeline")
    assert experiment is None or client().search_runs([experiment.experiment_id]) == []


def test_an_existing_experiment_gets_the_model_training_kind(kedro_project):
    experiment_id = client().create_experiment("dmae_pipeline", tags={KIND: "genai_development"})
    run_kedro(kedro_project, "data_prep", "test")
    assert client().get_experiment(experiment_id).tags[KIND] == "custom_model_development"


def test_runs_whose_process_died_on_this_host_are_marked_killed(kedro_project):
    """Only RUNNING runs of this host whose pid is gone: a live pid, another host's run and a
    run without the tags stay RUNNING."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    host = socket.gethostname()
    experiment_id = client().create_experiment("dmae_pipeline")
    tags = {
        "dead": {"host": host, "pid": str(gone.pid)},
        "alive": {"host": host, "pid": str(os.getpid())},
        "elsewhere": {"host": f"not-{host}", "pid": str(gone.pid)},
        "untagged": {},
    }
    ids = {name: client().create_run(experiment_id, tags=t).info.run_id for name, t in tags.items()}
    run_kedro(kedro_project, "data_prep", "test")
    runs = {name: client().get_run(run_id).info for name, run_id in ids.items()}
    assert runs["dead"].status == "KILLED"
    assert runs["dead"].end_time is not None
    for name in ("alive", "elsewhere", "untagged"):
        assert runs[name].status == "RUNNING"
        assert runs[name].end_time is None
