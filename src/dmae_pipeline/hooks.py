"""Project hooks: run data-parallel under torchrun, check the run's parameters as a whole, and
name and tag each MLflow run."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow.entities import RunStatus
from pydantic import BaseModel

from dmae_pipeline import distributed
from dmae_pipeline.catalog import DistributedCatalog
from dmae_pipeline.data import expected_spec
from dmae_pipeline.params import check_run

logger = logging.getLogger(__name__)
FAILED = RunStatus.to_string(RunStatus.FAILED)

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


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so exit handlers run (TrackingHook's among them)


class DistributedHook:
    """Makes a `kedro run` under torchrun one data-parallel run (README, "Many GPUs").

    Each process joins the process group before anything else runs. SIGTERM, which torchrun
    sends to every process once one has failed, exits like ``sys.exit`` (exit handlers run, so
    rank 0's MLflow run ends FAILED). The other ranks log warnings and errors only and track
    nothing (settings.py registers the tracking hooks on rank 0); one that fails marks rank 0's
    MLflow run FAILED itself, in case rank 0 cannot (stuck in a collective). Rank 0 alone saves
    catalog outputs (DistributedCatalog), which needs Kedro's default runner, SequentialRunner,
    without ``--async``. Rank 0 ends its MLflow run FINISHED only once every rank has completed
    the pipeline.
    """

    def __init__(self) -> None:
        self._tracking: tuple[str, str] | None = None  # rank 0's tracking URI and run id

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        if not distributed.init_from_env():
            return
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if not distributed.is_main():
            logging.disable(logging.INFO)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        if distributed.is_initialized() and not isinstance(catalog, DistributedCatalog):
            raise RuntimeError(
                f"this run's catalog, a {type(catalog).__name__}, would save every output in "
                "every process: under torchrun, run with Kedro's default runner, "
                "SequentialRunner, and settings.DATA_CATALOG_CLASS = DistributedCatalog"
            )

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if not distributed.is_initialized():
            return
        run = mlflow.active_run() if distributed.is_main() else None
        self._tracking = distributed.broadcast_object(
            None if run is None else (mlflow.get_tracking_uri(), run.info.run_id)
        )

    @hook_impl
    def before_node_run(self, node, is_async: bool) -> None:
        in_thread = threading.current_thread() is not threading.main_thread()
        if distributed.is_initialized() and (is_async or in_thread):
            raise RuntimeError(
                f"node {node.name}: under torchrun the processes save in step, from their main "
                "threads: run with Kedro's default runner, SequentialRunner, without --async"
            )

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        distributed.barrier()

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if distributed.is_main() or self._tracking is None:
            return
        uri, run_id = self._tracking
        try:
            mlflow.MlflowClient(uri).set_terminated(run_id, FAILED)
        except Exception as e:  # the run's own error matters more than its status
            logger.warning("could not mark the MLflow run %s FAILED: %s", run_id, e)


class TrackingHook(MlflowHook):
    """kedro-mlflow's hook, logging each typed parameter block key by key (``finetune.train.blr``)
    as it logs plain dicts. A run it started that is still active when the process exits (an
    interrupt, an error after the pipeline) ends FAILED, where MLflow would end it FINISHED."""

    def __init__(self) -> None:
        super().__init__()
        atexit.register(self.fail_unfinished_run)  # runs before MLflow's own exit handler

    def fail_unfinished_run(self) -> None:
        """End the run this hook started FAILED if it is still the active run."""
        run = mlflow.active_run()
        started_here = not getattr(self, "_already_active_mlflow", True)
        if run is not None and started_here and run.info.run_id == self.run_id:
            mlflow.end_run(FAILED)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in inputs.items()}
        super().before_node_run(node, catalog, plain, is_async)


class MlflowRunTagsHook:
    """Names and tags the run (pipelines, env, dataset, commit, host, pid, world size), ends this
    host's runs whose process died and sets the experiment's kind, once kedro-mlflow has started
    the run."""

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
                "world_size": str(distributed.world_size()),
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
