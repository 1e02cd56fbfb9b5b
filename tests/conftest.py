"""Shared fixtures: Kedro runs happen in a temporary copy of the project, never in the real one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
torch.set_num_threads(2)


def copy_project(dest: Path) -> Path:
    """conf/, pyproject.toml, the telemetry consent, empty data layers and an empty src/."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, dest / name)
    for layer in (PROJECT_ROOT / "data").iterdir():
        if layer.is_dir():
            (dest / "data" / layer.name).mkdir(parents=True)
    (dest / "src").mkdir()
    return dest


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> Path:
    project = copy_project(tmp_path / "project")
    monkeypatch.chdir(project)
    return project


def run_kedro(project: Path, pipelines: str = "__default__", env: str = "test", params=None):
    """Run pipelines in-process inside ``project`` (as ``kedro run --pipelines=...`` would)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        return session.run(pipeline_names=pipelines.split(","))
