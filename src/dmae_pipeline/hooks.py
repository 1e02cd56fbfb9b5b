"""Project hooks: name and tag each MLflow run so runs are easy to find and compare."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

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


class MlflowRunTagsHook:
    """Names and tags the run (pipelines, env, dataset, commit, host, pid), ends this host's runs
    whose process died and sets the experiment's kind. Runs after kedro-mlflow has started the
    run (plugin hooks are called first)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        client, host = mlflow.MlflowClient(), socket.gethostname()
        end_runs_of_dead_processes(client, run.info.experiment_id, host)
        client.set_experiment_tag(run.info.experiment_id, *EXPERIMENT_KIND)
        names = run_params.get("pipeline_names") or ["__default__"]
        env = run_params.get("env") or "local"
        data_prep = catalog.load("params:data_prep") if "params:data_prep" in catalog else {}
        mlflow.set_tags(
            {
                "mlflow.runName": f"{'+'.join(names)} @ {env}",
                "env": env,
                "pipelines": ",".join(names),
                "dataset": data_prep.get("source", "unknown"),
                "git_commit": git_commit(Path(run_params.get("project_path", "."))),
                "host": host,
                "pid": str(os.getpid()),
            }
        )
