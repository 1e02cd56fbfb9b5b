"""Shared fixtures: Kedro runs happen in a temporary copy of the project, never in the real one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from project_copy import (
    PROJECT_ROOT,
    copy_project,
    env_parameters,
    flat,
    run_kedro,
    tracking_to,
)

__all__ = ["PROJECT_ROOT", "copy_project", "env_parameters", "flat", "run_kedro", "tracking_to"]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
torch.set_num_threads(2)


# Tiny model settings for model and figure tests: 16x16 inputs, 4x4 patches (a 4x4 grid).
TINY_ENCODER = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
TINY_DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture
def tiny_encoder() -> dict:
    return dict(TINY_ENCODER)


@pytest.fixture
def tiny() -> dict:
    """build_dmae("tiny", **tiny) arguments."""
    return {**TINY_ENCODER, **TINY_DECODER}


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised tracking database: creating the schema costs seconds, copying it does not."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def kedro_project(tmp_path, monkeypatch, empty_mlflow_db) -> Path:
    """A project copy as the cwd, tracking to its own mlflow.db by absolute path.

    MLflow caches stores by URI, so the relative default would send later runs in the same
    process to the first copy's database.
    """
    project = copy_project(tmp_path / "project")
    shutil.copy(empty_mlflow_db, project / "mlflow.db")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    yield project
    while mlflow.active_run() is not None:
        mlflow.end_run()
