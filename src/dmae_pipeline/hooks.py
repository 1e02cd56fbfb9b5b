"""Project hooks: run data-parallel under torchrun, check the run's parameters as a whole, and
name and tag each MLflow run."""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import psutil
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registry
from kedro_mlflow.framework.hooks import MlflowHook
from kedro_mlflow.framework.hooks.utils import _flatten_dict
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from pydantic import BaseModel

from dmae_pipeline import distributed
from dmae_pipeline.catalog import DistributedCatalog
from dmae_pipeline.data import expected_spec
from dmae_pipeline.io import LockedError, UserError, command_line, exclusive_lock, json_digest
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

    SIGTERM (a scheduler's time limit; torchrun sends it to every process once one has failed)
    exits like ``sys.exit`` in every run, under torchrun or not: exit handlers run, so the
    MLflow run ends FAILED. Each process joins the process group before anything else runs.
    The other ranks log warnings and errors only and track nothing (settings.py registers the
    tracking hooks on rank 0); one that fails marks rank 0's
    MLflow run FAILED itself, in case rank 0 cannot (stuck in a collective). Rank 0 alone saves
    catalog outputs (DistributedCatalog), which needs Kedro's default runner, SequentialRunner,
    without ``--async``. Rank 0 ends its MLflow run FINISHED only once every rank has completed
    the pipeline.
    """

    def __init__(self) -> None:
        self._tracking: tuple[str, str] | None = None  # rank 0's tracking URI and run id

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if distributed.init_from_env() and not distributed.is_main():
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


def mlflow_config(context) -> dict[str, Any]:
    """The run's conf/<env>/mlflow.yml, as kedro-mlflow reads it."""
    patterns = ["mlflow*", "mlflow*/**", "**/mlflow*"]  # kedro-mlflow's
    context.config_loader.config_patterns.setdefault("mlflow", patterns)
    return context.config_loader["mlflow"]


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Stop at once, in one line naming ``uri``, when it is a tracking server that does not
    answer (MLflow itself would retry for minutes)."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answers
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(
            f"The MLflow tracking server {uri} does not answer ({reason}): start it, or point "
            "MLFLOW_TRACKING_URI at one that runs (unset, runs go to mlflow.db in the project)"
        ) from None


class TrackingHook(MlflowHook):
    """kedro-mlflow's hook, logging each typed parameter block key by key (``finetune.train.blr``)
    as it logs plain dicts. It first checks that the tracking server answers. A run it started
    that is still active when the process exits (an interrupt, an error after the pipeline)
    ends FAILED, where MLflow would end it FINISHED."""

    def __init__(self) -> None:
        super().__init__()
        atexit.register(self.fail_unfinished_run)  # runs before MLflow's own exit handler

    @hook_impl
    def after_context_created(self, context) -> None:
        check_tracking_server(mlflow_config(context)["server"]["mlflow_tracking_uri"])
        super().after_context_created(context)

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


# Tags that kedro-mlflow copies from Kedro's run parameters and that mislead: the runner object's
# repr, Kedro's session id as "run_id", a command rebuilt from the run parameters, the --params
# overrides of blocks the run may not execute. The "command" tag holds the real command line.
DROPPED_TAGS = ("runner", "run_id", "kedro_command", "runtime_params", "extra_params")
# Checkpoints that a run may read from an earlier run: the block that trained them.
CHECKPOINTS = {
    "pretrained_model": "pretrain",
    "cifar_pretrained_model": "cifar_pretrain",
    "finetuned_models": "finetune",
}


def run_name(pipelines: list[str], env: str) -> str:
    """``certify+report @ local``; the default chain is named by its first and last stage."""
    if pipelines == ["__default__"]:
        chain = set(registry["__default__"].nodes)
        stages = [n for n in registry if n != "__default__" and set(registry[n].nodes) <= chain]
        pipelines = [f"{stages[0]}..{stages[-1]}"] if stages else pipelines
    return f"{'+'.join(pipelines)} @ {env}"


def dvc_repro_id() -> str | None:
    """``<host>-<pid>-<start>`` of the `dvc repro` running this stage (DVC sets DVC_STAGE), so
    that the stages of one `dvc repro` share a tag; None outside DVC."""
    if "DVC_STAGE" not in os.environ:
        return None
    for process in psutil.Process().parents():
        if process.name() == "dvc" or "dvc" in [Path(a).name for a in process.cmdline()[:3]]:
            return f"{socket.gethostname()}-{process.pid}-{int(process.create_time())}"
    return None


def trained_params(block: str, checkpoint: Any) -> dict[str, Any]:
    """What a pipeline checkpoint records of its training parameters, as MLflow params
    ``trained.<block>.<key>`` (``trained.finetune.sigma_0.25.train.epochs`` for a partition)."""
    if not isinstance(checkpoint, dict):
        return {}
    if "params" in checkpoint:
        return _flatten_dict({f"trained.{block}": checkpoint["params"]}, recursive=True, sep=".")
    return {  # partitions: loaded on demand, as the node that reads them will
        k: v
        for name, load in sorted(checkpoint.items())
        if callable(load)
        for k, v in trained_params(f"{block}.{name}", load()).items()
    }


def log_dataset(spec: dict[str, Any], path: Path, context: str) -> None:
    """The run's dataset as an MLflow input: its name, the digest of its spec (``path``)."""
    digest = json_digest(spec)
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path.resolve()))
    mlflow.log_input(MetaDataset(source, name=spec["name"], digest=digest[:8]), context=context)


class MlflowRunTagsHook:
    """Names and tags the run (pipelines, env, dataset, command, commit, host, pid, world size,
    the `dvc repro` it belongs to), logs its dataset and the training parameters of the
    checkpoints it reads from earlier runs, ends this host's runs whose process died and sets
    the experiment's kind, once kedro-mlflow has started the run."""

    def __init__(self) -> None:
        self._read_only: set[str] = set()  # inputs that no node of the run writes
        self._logged: set[str] = set()
        self._spec_path = Path("dataset_spec.json")

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._read_only, self._logged = set(pipeline.inputs()), set()
        if "dataset_spec" in catalog:
            self._spec_path = local_path(catalog["dataset_spec"]) or self._spec_path
        run = mlflow.active_run()
        if run is None:
            return
        client, host = mlflow.MlflowClient(), socket.gethostname()
        end_runs_of_dead_processes(client, run.info.experiment_id, host)
        client.set_experiment_tag(run.info.experiment_id, *EXPERIMENT_KIND)
        for key in DROPPED_TAGS:
            if key in client.get_run(run.info.run_id).data.tags:
                client.delete_tag(run.info.run_id, key)
        names = run_params.get("pipeline_names") or ["__default__"]
        env = run_params.get("env") or "local"
        data_prep = catalog.load("parameters").get("data_prep")
        tags = {
            "mlflow.runName": run_name(names, env),
            "env": env,
            "pipelines": ",".join(names),
            "dataset": getattr(data_prep, "source", None) or dict(data_prep or {}).get("source"),
            "command": command_line(),
            "git_commit": git_commit(Path(run_params.get("project_path", "."))),
            "host": host,
            "pid": str(os.getpid()),
            "world_size": str(distributed.world_size()),
            "dvc_stage": os.environ.get("DVC_STAGE"),
            "dvc_repro": dvc_repro_id(),
        }
        mlflow.set_tags({k: v for k, v in tags.items() if v is not None})

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        if mlflow.active_run() is None or dataset_name in self._logged:
            return
        if dataset_name == "dataset_spec":
            log_dataset(data, self._spec_path, "read")
        elif dataset_name in CHECKPOINTS and dataset_name in self._read_only:
            mlflow.log_params(trained_params(CHECKPOINTS[dataset_name], data))
        self._logged.add(dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if mlflow.active_run() is not None and dataset_name == "dataset_spec":
            log_dataset(data, self._spec_path, "prepared")
            self._logged.add(dataset_name)


def local_path(dataset: Any) -> Path | None:
    """The local file or folder that a catalog dataset reads and writes, if it has one."""
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
    if path is None or getattr(dataset, "_protocol", "file") not in ("file", "local"):
        return None
    return Path(str(path))


class OutputLockHook:
    """Locks every file and folder that the run's nodes write (``.<name>.lock`` beside each)
    from before the first node until the run ends, so that a second run writing any of them
    stops at once, naming this one, rather than mixing its outputs and tracked artifacts with
    this run's. The operating system drops the locks when the process exits."""

    def __init__(self) -> None:
        self._locks = ExitStack()

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        # A run that another hook refused before its first node never reached the hooks below.
        self._locks.close()
        paths = {local_path(catalog[name]) for name in pipeline.all_outputs() if name in catalog}
        try:
            for path in sorted(p for p in paths if p is not None):
                lock = path.with_name(f".{path.name}.lock")
                self._locks.enter_context(exclusive_lock(lock, f"{path}, an output of this run"))
        except LockedError:
            self._locks.close()
            raise

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._locks.close()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._locks.close()


def run_summary(table: Any, written: list[Path], run: Any, uri: str) -> str:
    """What a run made, for its last lines: the certified accuracy (best over sigma) when it made
    the table, its report and figures, and where its MLflow run is."""
    lines = []
    if table is not None:
        best = table.set_index("sigma").loc["best"]
        radii = [c for c in table.columns if re.fullmatch(r"r_\d+(\.\d+)?", c)]
        lines += [
            f"Certified accuracy, best over sigma ({int(best['images'])} test images):",
            "  radius    " + " ".join(f"{c[2:]:>6}" for c in radii),
            "  accuracy  " + " ".join(f"{best[c]:>6.1%}" for c in radii),
        ]
    shown = [p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p for p in written]
    reports = [str(p) for p in shown if p.suffix == ".md"]
    figures = [str(p) for p in shown if p.suffix == ".png"]
    lines += [f"Report:  {', '.join(reports)}"] if reports else []
    lines += [f"Figures: {', '.join(figures)}"] if figures else []
    if run is not None:
        page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        if urlsplit(uri).scheme in ("http", "https"):
            lines.append(f"MLflow run {run.info.run_id}: {uri.rstrip('/')}/{page}")
        else:
            lines += [
                f"MLflow run {run.info.run_id} in {uri}; to browse it:",
                f"  mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000/{page}",
            ]
    return "\n".join(lines)


class RunSummaryHook:
    """Ends a successful run with :func:`run_summary` on stdout."""

    def __init__(self) -> None:
        self._catalog, self._table, self._written = None, None, []

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._catalog, self._table, self._written = catalog, None, []

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if dataset_name == "certified_accuracy_table":
            self._table = data
        path = local_path(self._catalog[dataset_name]) if self._catalog is not None else None
        if path is not None and path not in self._written:
            self._written.append(path)

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the MLflow run
    def after_pipeline_run(self) -> None:
        summary = run_summary(
            self._table, self._written, mlflow.active_run(), mlflow.get_tracking_uri()
        )
        if summary:
            print(summary, flush=True)


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
