"""Each `kedro run` is one MLflow run: named after pipelines and env, tagged, FAILED on error;
runs whose process died are ended as KILLED."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.framework.startup import bootstrap_project
from kedro.validation.exceptions import ParameterValidationError

from conftest import PROJECT_ROOT, run_kedro
from dmae_pipeline.hooks import dvc_repro_id, run_name, run_summary
from dmae_pipeline.io import LockedError, command_line, exclusive_lock

KIND = "mlflow.experimentKind"


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def only_run(project) -> mlflow.entities.Run:
    experiment = client().get_experiment_by_name("dmae_pipeline")
    (run,) = client().search_runs([experiment.experiment_id])
    return run


def test_run_is_named_tagged_and_logs_flattened_parameters(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    run = only_run(kedro_project)
    assert run.info.run_name == "data_prep @ test"
    assert run.info.status == "FINISHED"
    assert run.data.tags["env"] == "test"
    assert run.data.tags["dataset"] == "digits"
    assert run.data.tags["git_commit"]
    assert run.data.tags["host"] == socket.gethostname()
    assert run.data.tags["pid"] == str(os.getpid())  # run_kedro runs in this process
    assert run.data.params["data_prep.source"] == "digits"
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.tags[KIND] == "custom_model_development"
    # the real command line, and none of the tags that kedro-mlflow copies from Kedro's run
    # parameters: the runner's repr, the session id as "run_id", a rebuilt command
    assert run.data.tags["command"] == command_line()
    assert not {"runner", "run_id", "kedro_command", "runtime_params"} & set(run.data.tags)
    # the dataset it prepared, by name and the digest of its spec
    spec = json.loads((kedro_project / "data/05_model_input/dataset_spec.json").read_text())
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == "digits"
    assert (
        logged.dataset.digest
        == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    )
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "prepared"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/kedro", "run", "--params=a=x y"], "kedro run '--params=a=x y'"),
        (["python -m kedro", "run"], "python -m kedro run"),  # a torchrun worker's
        (["/venv/bin/kedro"], "kedro"),
    ],
)
def test_the_command_tag_reads_as_typed(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == expected


def test_the_default_chain_is_named_by_its_stages():
    bootstrap_project(PROJECT_ROOT)
    assert run_name(["__default__"], "local") == "data_prep..publish @ local"
    assert run_name(["certify", "report"], "cifar10") == "certify+report @ cifar10"


def test_the_runs_of_one_dvc_repro_share_a_tag(tmp_path, monkeypatch):
    """Each stage's kedro run finds the `dvc` process above it: two stages of one `dvc repro`
    give the same id, another `dvc repro` another one, and no DVC none."""
    dvc = tmp_path / "dvc"  # a stand-in for DVC's executable: runs two stages, as children
    code = "from dmae_pipeline.hooks import dvc_repro_id; print('id', dvc_repro_id())"
    probe = f'{sys.executable} -c "{code}"'
    dvc.write_text(f"#!/bin/sh\n{probe}\n{probe}\n")
    dvc.chmod(0o755)
    env = {**os.environ, "DVC_STAGE": "certify", "PYTHONPATH": str(PROJECT_ROOT / "src")}
    first = subprocess.run([dvc], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([dvc], env=env, capture_output=True, text=True, check=True)
    ids = [
        line.split()[1]
        for line in (first.stdout + second.stdout).splitlines()
        if line.startswith("id ")
    ]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert ids[0].startswith(f"{socket.gethostname()}-")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert dvc_repro_id() is None


def _hold(path, ready, release):
    with exclusive_lock(path, "a test"):
        ready.set()
        release.wait(60)


def test_a_second_run_writing_the_same_outputs_stops_at_once(kedro_project):
    """While a process holds one output of data_prep, a data_prep run stops before any node or
    MLflow run, naming the holder; once it is gone, a run goes through and releases its locks."""
    spec = kedro_project / "data/05_model_input/dataset_spec.json"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold, args=(spec.with_name(".dataset_spec.json.lock"), ready, release)
    )
    holder.start()
    try:
        assert ready.wait(60)
        expected = rf"pid {holder.pid} on {socket.gethostname()}, `.+`\) is using {spec}, an"
        with pytest.raises(LockedError, match=expected):
            run_kedro(kedro_project, "data_prep", "test")
    finally:
        release.set()
        holder.join(60)
    assert not spec.exists()
    experiment = client().get_experiment_by_name("dmae_pipeline")
    assert experiment is None or client().search_runs([experiment.experiment_id]) == []
    run_kedro(kedro_project, "data_prep", "test")
    run_kedro(kedro_project, "data_prep", "test")  # the first run's locks are released
    with exclusive_lock(spec.with_name(".dataset_spec.json.lock"), "x"):
        pass


def kedro_run(project: Path, *args: str, **env: str) -> subprocess.Popen:
    """`kedro run --env=test ...` in its own process, as a user starts it."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "COLUMNS": "300", **env}
    command = [sys.executable, "-m", "kedro", "run", "--env=test", *args]
    return subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigterm_ends_a_single_run_failed(kedro_project):
    """SIGTERM (a scheduler's time limit) to a plain `kedro run` ends its MLflow run FAILED.
    Its output has no line per dataset loaded and no MLflow type-hint warning."""
    run_kedro(kedro_project, "data_prep", "test")
    process = kedro_run(
        kedro_project, "--pipelines=pretrain", "--params=pretrain.train.epochs=1000"
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:  # until it trains
            runs = client().search_runs([only_run_experiment()], "tags.pipelines = 'pretrain'")
            if runs and "pretrain/train_loss" in runs[0].data.metrics:
                break
            time.sleep(1)
        assert process.poll() is None, process.stdout.read()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output
    (run,) = client().search_runs([only_run_experiment()], "tags.pipelines = 'pretrain'")
    assert run.info.status == "FAILED"
    # quiet: Kedro's node lines, without a line per dataset loaded or MLflow's type-hint warning
    assert "Running node: " in output and "train_dmae" in output
    assert "Loading data from" not in output and "Add type hints" not in output


def only_run_experiment() -> str:
    return client().get_experiment_by_name("dmae_pipeline").experiment_id


def test_a_dead_tracking_server_stops_the_run_at_once_in_one_line(kedro_project):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    process = kedro_run(kedro_project, "--pipelines=data_prep", MLFLOW_TRACKING_URI=uri)
    output, _ = process.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert process.returncode == 1
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"Error: The MLflow tracking server {uri} does not answer"), output
    assert not (kedro_project / "data/05_model_input/dataset_spec.json").exists()


def test_a_run_ends_with_a_summary_of_what_it_made(kedro_project, capsys):
    run_kedro(kedro_project, "data_prep", "test")
    run = only_run(kedro_project)
    lines = capsys.readouterr().out.strip().splitlines()
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert lines[-2] == f"MLflow run {run.info.run_id} in {uri}; to browse it:"
    assert lines[-1].startswith(f"  mlflow ui --backend-store-uri {uri}")
    assert lines[-1].endswith(f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")


def test_the_summary_shows_the_best_certified_accuracies_report_and_figures():
    table = pd.DataFrame(
        {"sigma": ["0.25", "0.50", "best"], "images": [50, 50, 50], "acr": [0.3, 0.4, 0.45],
         "r_0.00": [0.8, 0.7, 0.8], "r_0.00_ci_low": [0.6, 0.5, 0.6], "r_0.50": [0.1, 0.44, 0.44]}
    )  # fmt: skip
    report = Path.cwd() / "data/08_reporting/certified_accuracy.md"  # shown from the project
    written = [report, Path("a.csv"), Path("/elsewhere/b.png")]
    assert run_summary(table, written, None, "sqlite:///mlflow.db").splitlines() == [
        "Certified accuracy, best over sigma (50 test images):",
        "  radius      0.00   0.50",
        "  accuracy   80.0%  44.0%",
        "Report:  data/08_reporting/certified_accuracy.md",
        "Figures: /elsewhere/b.png",
    ]


def test_failed_run_is_marked_failed_and_keeps_its_parameters(kedro_project, tmp_path):
    params = {"data_prep": {"source": "cifar10", "image_size": 32, "test_fraction": None,
                            "raw_dir": str(tmp_path / "missing")}}  # fmt: skip
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        run_kedro(kedro_project, "data_prep", "test", params=params)
    run = only_run(kedro_project)
    assert run.info.status == "FAILED"
    assert run.data.params["data_prep.raw_dir"] == str(tmp_path / "missing")


def test_parameters_that_do_not_validate_start_no_run(kedro_project):
    with pytest.raises(ParameterValidationError, match="val_fraction"):
        run_kedro(kedro_project, "data_prep", "test", params={"data_prep": {"val_fraction": 0.99}})
    experiment = client().get_experiment_by_name("dmae_pipeline")
    assert experiment is None or client().search_runs([experiment.experiment_id]) == []


def test_an_existing_experiment_gets_the_model_training_kind(kedro_project):
    experiment_id = client().create_experiment("dmae_pipeline", tags={KIND: "genai_development"})
    run_kedro(kedro_project, "data_prep", "test")
    assert client().get_experiment(experiment_id).tags[KIND] == "custom_model_development"


def test_runs_whose_process_died_on_this_host_are_marked_killed(kedro_project):
    """Only RUNNING runs of this host whose pid is gone: a live pid, another host's run and a
    run without the tags stay RUNNING."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    host = socket.gethostname()
    experiment_id = client().create_experiment("dmae_pipeline")
    tags = {
        "dead": {"host": host, "pid": str(gone.pid)},
        "alive": {"host": host, "pid": str(os.getpid())},
        "elsewhere": {"host": f"not-{host}", "pid": str(gone.pid)},
        "untagged": {},
    }
    ids = {name: client().create_run(experiment_id, tags=t).info.run_id for name, t in tags.items()}
    run_kedro(kedro_project, "data_prep", "test")
    runs = {name: client().get_run(run_id).info for name, run_id in ids.items()}
    assert runs["dead"].status == "KILLED"
    assert runs["dead"].end_time is not None
    for name in ("alive", "elsewhere", "untagged"):
        assert runs[name].status == "RUNNING"
        assert runs[name].end_time is None
