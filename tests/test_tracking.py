"""Each `kedro run` is one MLflow run: named after pipelines and env, tagged, FAILED on error."""

from __future__ import annotations

import os

import mlflow
import pytest

from conftest import run_kedro


def only_run(project) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("dmae_pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_run_is_named_tagged_and_logs_flattened_parameters(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    run = only_run(kedro_project)
    assert run.info.run_name == "data_prep @ test"
    assert run.info.status == "FINISHED"
    assert run.data.tags["env"] == "test"
    assert run.data.tags["dataset"] == "digits"
    assert run.data.tags["git_commit"]
    assert run.data.params["data_prep.source"] == "digits"


def test_failed_run_is_marked_failed_and_keeps_its_parameters(kedro_project):
    with pytest.raises(ValueError, match="val_fraction"):
        run_kedro(kedro_project, "data_prep", "test", params={"data_prep": {"val_fraction": 0.99}})
    run = only_run(kedro_project)
    assert run.info.status == "FAILED"
    assert run.data.params["data_prep.val_fraction"] == "0.99"
