"""Temporary copies of the project, so that tests never write into the real data/ or mlflow.db."""

from __future__ import annotations

import shutil
from pathlib import Path

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
