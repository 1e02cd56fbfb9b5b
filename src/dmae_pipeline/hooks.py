"""Project hooks: check the run's parameters as a whole, and name and tag each MLflow run."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks import MlflowHook
from pydantic import BaseModel

from dmae_pipeline.data import expected_spec
from dmae_pipeline.params import check_run

# The MLflow UI opens an experiment of this kind on its training-runs table (else on GenAI views).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def git_commit(path: Path) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files have changed."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def end_runs_of_dead_processes(client: mlflow.MlflowClient, experiment_id: str, host: str) -> None:
    """Mark KILLED this host's RUNNING runs whose process is gone (SIGKILL ends no run)."""
    running = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.host = '{host}'"
    )
    for run in running:
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")


class TrackingHook(MlflowHook):
    """kedro-mlflow's hook, logging each typed parameter block key by key (``finetune.train.blr``)
    as it logs plain dicts."""

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in inputs.items()}
        super().before_node_run(node, catalog, plain, is_async)


class MlflowRunTagsHook:
    """Names and tags the run (pipelines, env, dataset, commit, host, pid), ends this host's runs
    whose process died and sets the experiment's kind, once kedro-mlflow has started the run."""

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        client, host = mlflow.MlflowClient(), socket.gethostname()
        end_runs_of_dead_processes(client, run.info.experiment_id, host)
        client.set_experiment_tag(run.info.experiment_id, *EXPERIMENT_KIND)
        names = run_params.get("pipeline_names") or ["__default__"]
        env = run_params.get("env") or "local"
        data_prep = catalog.load("parameters").get("data_prep")
        mlflow.set_tags(
            {
                "mlflow.runName": f"{'+'.join(names)} @ {env}",
                "env": env,
                "pipelines": ",".join(names),
                "dataset": getattr(data_prep, "source", None)
                or dict(data_prep or {}).get("source"),
                "git_commit": git_commit(Path(run_params.get("project_path", "."))),
                "host": host,
                "pid": str(os.getpid()),
            }
        )


class ParamsHook:
    """Checks the run's parameters as a whole (``params.check_run``) before any node runs and
    before tracking starts; Kedro has validated each block the run reads by then."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        parameters = catalog.load("parameters")
        used = {
            name.removeprefix("params:").split(".")[0]
            for name in pipeline.inputs()
            if name.startswith("params:")
        }
        check_run(
            parameters,
            used,
            _data(parameters, used, catalog),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )


def _data(parameters: dict[str, Any], used: set[str], catalog) -> dict[str, Any] | None:
    """What the run's data will be: from data_prep's parameters when the run prepares it, else
    from the dataset spec on disk, else unknown."""
    if "data_prep" in used:
        prep = parameters["data_prep"]
        return expected_spec(prep.source, prep.val_fraction, prep.test_fraction)
    if catalog.exists("dataset_spec"):
        return catalog.load("dataset_spec")
    return None
