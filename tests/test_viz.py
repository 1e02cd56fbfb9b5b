"""kedro viz loads every env that leaves a block out (compare everywhere but its own env,
cifar_pretrain on ImageNet) without an error or a warning about those blocks."""

from __future__ import annotations

import logging

import pytest

from conftest import copy_project

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("env", ["base", "cifar10", "imagenet"])
def test_kedro_viz_loads_the_env_without_warnings(tmp_path, env, caplog):
    from kedro_viz.data_access import DataAccessManager
    from kedro_viz.integrations.kedro.data_loader import load_data
    from kedro_viz.server import populate_data

    project = copy_project(tmp_path / "project")
    catalog, pipelines, store = load_data(project, env=env)
    with caplog.at_level(logging.WARNING, logger="kedro_viz"):
        populate_data(DataAccessManager(), catalog, pipelines, store)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kedro_viz")] == []
