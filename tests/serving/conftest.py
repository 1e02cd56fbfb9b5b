"""The tiny smoothed classifier logged and registered in a tracking store of its own, and
``mlflow models serve`` serving it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

from dmae_pipeline.serving import log_smoothed_classifier
from project_copy import tracking_to
from test_end_to_end import free_port

from .tiny import DEFAULTS, LIMITS, RADII, SPEC, images, tiny_checkpoint

NAME = "dmae_digits_sigma_0.25"
BIN = Path(sys.executable).parent


def bare_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a process that must find the package in the model's own code, with
    the thread count of this one (so that its floating-point sums are these)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {
        **env,
        "PATH": f"{BIN}{os.pathsep}{env['PATH']}",  # mlflow starts the venv's uvicorn by name
        "MLFLOW_TRACKING_URI": tracking_uri,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }


@pytest.fixture(scope="session")
def registered(tmp_path_factory, empty_mlflow_db) -> SimpleNamespace:
    """The tiny model logged into a run and registered as version 1 of NAME."""
    folder = tmp_path_factory.mktemp("registry")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(uri).create_experiment(
        "serving", artifact_location=(folder / "mlruns").as_uri()
    )
    with tracking_to(uri), mlflow.start_run(experiment_id=experiment) as run:
        info = log_smoothed_classifier(
            tiny_checkpoint(),
            SPEC,
            DEFAULTS,
            LIMITS,
            images(1, seed=99),
            radii=RADII,
            name="sigma_0_25",
            registered_model_name=NAME,
        )
    return SimpleNamespace(uri=uri, folder=folder, info=info, run_id=run.info.run_id)


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory) -> str:
    """``mlflow models serve -m models:/NAME/latest --env-manager local`` on a free port of
    127.0.0.1, started from an empty folder; its base URL. Stopped (its process group) after the
    module's tests."""
    port, cwd = free_port(), tmp_path_factory.mktemp("serve")
    command = [BIN / "mlflow", "models", "serve", "-m", f"models:/{NAME}/latest",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with (cwd / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=bare_env(registered.uri), stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start:\n{(cwd / 'server.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
