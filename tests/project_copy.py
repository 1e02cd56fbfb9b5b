"""Temporary copies of the project, so that tests never write into the real data/ or mlflow.db."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """conf/, pyproject.toml, the telemetry consent, data layers (.gitkeep only), an empty src/."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, dest / name)
    for keep in (PROJECT_ROOT / "data").glob("*/.gitkeep"):
        (dest / "data" / keep.parent.name).mkdir(parents=True)
        shutil.copy(keep, dest / "data" / keep.parent.name / keep.name)
    (dest / "src").mkdir()
    return dest


def run_kedro(project: Path, pipelines: str = "__default__", env: str = "test", params=None):
    """Run pipelines in-process inside ``project``, as ``kedro run --pipelines=...`` would."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        return session.run(pipeline_names=pipelines.split(","))


@contextmanager
def tracking_to(uri: str):
    """MLflow's process-wide tracking URI set to ``uri``, then set back. It overrides
    MLFLOW_TRACKING_URI, and clients made without a URI (the datasets', the fluent API's) follow
    it; set_tracking_uri also exports the URI to the environment, which is restored too."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    with mock.patch.dict(os.environ):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


def env_parameters(env: str = "test") -> dict:
    """An env's parameters as ``kedro run --env=<env>`` resolves them (its files merged onto
    conf/base), before validation."""
    from kedro.config import OmegaConfigLoader

    from dmae_pipeline.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), env=None if env == "base" else env, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested parameter tree as its dotted keys and leaf values."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= flat(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found
