"""The catalog's own dataset types that no pipeline test pins down alone."""

from __future__ import annotations

import shutil

import mlflow
import pytest
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

from conftest import tracking_to
from dmae_pipeline.catalog import MlflowMetricsBatchDataset

METRICS = {
    "report/acr/sigma_0.25": {"value": 0.41, "step": 0},
    "report/curve/sigma_0.25": [{"value": 0.9, "step": 0}, {"value": 0.5, "step": 25}],
    "report/curve/best": [{"value": 1.0, "step": 0}, {"value": 0.0, "step": 300}],
}


@pytest.fixture
def client(tmp_path, empty_mlflow_db):
    """A client of a fresh tracking database, which the datasets' own clients also reach: the
    tracking URI set in the process (it overrides the environment's), then set back."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_to(uri):
        yield mlflow.MlflowClient(uri)


def histories(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


@pytest.mark.parametrize(("prefix", "key_prefix"), [("", ""), ("comparison", "comparison.")])
def test_batched_metrics_log_what_kedro_mlflow_logs_in_one_request(
    client, monkeypatch, prefix, key_prefix
):
    experiment = client.create_experiment("metrics")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    MlflowMetricsHistoryDataset(run_id=runs[0], prefix=prefix).save(METRICS)

    requests = []
    log_batch = mlflow.MlflowClient.log_batch
    monkeypatch.setattr(mlflow.MlflowClient, "log_metric", pytest.fail)
    monkeypatch.setattr(
        mlflow.MlflowClient, "log_batch", lambda *a, **k: requests.append(log_batch(*a, **k))
    )
    MlflowMetricsBatchDataset(run_id=runs[1], prefix=prefix).save(METRICS)

    assert len(requests) == 1
    expected = histories(client, runs[0])
    assert expected == histories(client, runs[1])
    assert sorted(expected) == sorted(key_prefix + key for key in METRICS)
    assert expected[f"{key_prefix}report/curve/best"] == [(0, 1.0), (300, 0.0)]


def test_batched_metrics_log_nothing_when_logging_is_off(client):
    run = client.create_run(client.create_experiment("metrics")).info.run_id
    dataset = MlflowMetricsBatchDataset(run_id=run, prefix="")
    dataset._logging_activated = False
    dataset.save(METRICS)
    assert client.get_run(run).data.metrics == {}
