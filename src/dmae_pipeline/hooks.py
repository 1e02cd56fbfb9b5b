"""Project hooks: name and tag each MLflow run so runs are easy to find and compare."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl


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


class MlflowRunTagsHook:
    """Runs after kedro-mlflow has started the run (plugin hooks are called first)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if mlflow.active_run() is None:
            return
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
            }
        )
