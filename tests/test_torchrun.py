"""`torchrun --nproc_per_node=2 -m kedro run` on the CPU (gloo): one MLflow run per invocation,
rank 0 alone writes files and tracks, the other ranks read what rank 0 wrote, and a rank that
fails fails the run.

The torchrun workers are watched through Python audit hooks (a sitecustomize module put on
their PYTHONPATH): every file each rank opens or renames in the project, and every connection to
a tracking database, with its time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset

from conftest import run_kedro
from dmae_pipeline import distributed
from dmae_pipeline.catalog import DistributedCatalog, TorchFileDataset
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.hooks import DistributedHook, TrackingHook
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import build_classifier
from dmae_pipeline.settings import HOOKS
from dmae_pipeline.training import accuracy_evaluator

TORCHRUN = Path(sys.executable).with_name("torchrun")
TRAINING = "data_prep,pretrain,cifar_pretrain,finetune"
# Every catalog output of TRAINING that is a file.
OUTPUTS = [
    "data/05_model_input/dataset_spec.json",
    "data/05_model_input/train.pt",
    "data/05_model_input/val.pt",
    "data/05_model_input/test.pt",
    "data/06_models/pretrain/dmae.pt",
    "data/06_models/pretrain/dmae_pretrained.pth",
    "data/08_reporting/pretrain_reconstruction.png",
    "data/06_models/cifar_pretrain/dmae.pt",
    "data/06_models/cifar_pretrain/dmae_pretrained.pth",
    "data/08_reporting/cifar_pretrain_reconstruction.png",
    "data/06_models/finetune/sigma_0.25.pt",
    "data/06_models/finetune/sigma_0.50.pt",
    "data/08_reporting/finetune_validation.csv",
]

SITECUSTOMIZE = '''
"""Audit hooks for torchrun's workers (RANK set): what each rank opens and renames under the
working directory, and its tracking-database connections, as JSON lines in
$AUDIT_DIR/rank<RANK>.jsonl. Reading a file named $FAIL_ON makes rank 1 fail: raise with
$FAIL_HOW=raise; die at once with $FAIL_HOW=kill, while rank 0 sleeps there (busy, not in a
collective, so that only a signal stops it)."""
import json, os, signal, sys, time

RANK = os.environ.get("RANK")
if RANK is not None:
    ROOT = os.getcwd() + os.sep
    LOG = open(os.path.join(os.environ["AUDIT_DIR"], f"rank{RANK}.jsonl"), "a", buffering=1)
    FAIL_ON, FAIL_HOW = os.environ.get("FAIL_ON"), os.environ.get("FAIL_HOW")

    def log(kind, path):
        LOG.write(json.dumps({"t": time.time(), "kind": kind, "path": path}) + "\\n")

    def audit(event, args):
        if event == "sqlite3.connect":
            log("tracking", str(args[0]))
            return
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            path, mode, flags = args
            written = set(mode or "") & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            kind = "write" if written else "read"
        elif event == "os.rename":
            path, kind = args[1], "write"
        else:
            return
        path = os.path.abspath(path)
        if path.startswith(ROOT):
            log(kind, path[len(ROOT):])
            if kind == "read" and os.path.basename(path) == FAIL_ON:
                if RANK == "1" and FAIL_HOW == "raise":
                    raise RuntimeError(f"rank 1 cannot read {path} (test)")
                if RANK == "1" and FAIL_HOW == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if RANK == "0" and FAIL_HOW == "kill":
                    time.sleep(60)
                    log("slept", path)

    sys.addaudithook(audit)
'''


def torchrun(project: Path, audit: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 <args>`` in ``project``, its workers audited into ``audit``."""
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(audit), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args],
        cwd=project,
        env={
            **os.environ,
            "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",  # Kedro's log lines unwrapped
            "AUDIT_DIR": str(audit),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def events(audit: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (audit / f"rank{rank}.jsonl").read_text().splitlines()]


def only_run(project: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


@pytest.mark.slow
def test_training_under_torchrun_is_one_run_written_by_rank_0(kedro_project, tmp_path):
    audit = tmp_path / "audit"
    done = torchrun(kedro_project, audit, "-m", "kedro", "run", f"--pipelines={TRAINING}",
                    "--env=test")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    zero, one = events(audit, 0), events(audit, 1)

    # Rank 0 wrote every output file once; rank 1 wrote nothing and never tracked.
    writes = [e["path"] for e in zero if e["kind"] == "write"]
    assert {path: writes.count(path) for path in OUTPUTS} == dict.fromkeys(OUTPUTS, 1)
    assert [e for e in one if e["kind"] != "read"] == []
    # Rank 1 trained on what rank 0 wrote, read only once rank 0 had written it (the inputs of
    # pretrain, cifar_pretrain and finetune).
    written = {e["path"]: e["t"] for e in zero if e["kind"] == "write" and e["path"] in OUTPUTS}
    read = [e for e in one if e["path"] in written]
    assert {e["path"] for e in read} >= {"data/05_model_input/train.pt",
                                         "data/06_models/pretrain/dmae.pt",
                                         "data/06_models/cifar_pretrain/dmae.pt"}  # fmt: skip
    assert all(e["t"] > written[e["path"]] for e in read)
    # Rank 1 logs warnings only: each node's INFO lines appear once.
    assert (done.stdout + done.stderr).count("Completed node: finetune.finetune_classifiers") == 1

    run = only_run(kedro_project)
    assert run.info.status == "FINISHED"
    assert set(run.data.tags["pipelines"].split(",")) == set(TRAINING.split(","))
    assert run.data.tags["world_size"] == "2"
    assert run.data.params["finetune.train.accum_iter"] == "2"
    client = mlflow.MlflowClient(f"sqlite:///{kedro_project / 'mlflow.db'}")
    for metric, epochs in (("pretrain/train_loss", 3), ("finetune/sigma_0.50/val_noisy_acc", 2)):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # logged once
    artifacts = {a.path for folder in ("figures", "finetune")
                 for a in client.list_artifacts(run.info.run_id, folder)}  # fmt: skip
    assert artifacts == {"figures/pretrain_reconstruction.png",
                         "figures/cifar_pretrain_reconstruction.png",
                         "finetune/finetune_validation.csv"}  # fmt: skip

    # The validation accuracies are the models' own, as one process computes them.
    folder = kedro_project / "data/05_model_input"
    spec = json.loads((folder / "dataset_spec.json").read_text())
    val_set = SplitDataset(safe_torch_load(folder / "val.pt"), build_transform(spec, train=False))
    table = pd.read_csv(kedro_project / "data/08_reporting/finetune_validation.csv")
    for row in table.itertuples():
        part = safe_torch_load(kedro_project / f"data/06_models/finetune/sigma_{row.sigma:.2f}.pt")
        model = build_classifier(**part["config"])
        model.load_state_dict(part["model"])
        evaluate = accuracy_evaluator(val_set, sigma=row.sigma, batch_size=128, seed=0)
        assert evaluate(model) == pytest.approx(
            {"clean_acc": row.clean_acc, "noisy_acc": row.noisy_acc}, abs=1.5 / len(val_set)
        )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_rank_that_fails_stops_every_rank_and_fails_the_run(kedro_project, tmp_path, how):
    """Rank 1 cannot read the validation split of a finetune run.

    raise: rank 1 raises, while rank 0 starts training and waits for it at a collective. Rank
    1's error reaches the output, it marks the run FAILED, and torchrun stops rank 0.
    kill: rank 1 dies at once (SIGKILL, as from the out-of-memory killer) while rank 0 is busy
    reading the split, not in a collective: torchrun stops rank 0 with SIGTERM, and rank 0 alone
    ends its run FAILED as it exits.
    """
    audit = tmp_path / "audit"
    scratch = "finetune.init=scratch,finetune.model.preset=pico,finetune.model.img_size=16"
    command = ["-m", "kedro", "run", "--pipelines=data_prep,finetune", "--env=test"]
    done = torchrun(kedro_project, audit, *command, f"--params={scratch}", FAIL_ON="val.pt",
                    FAIL_HOW=how)  # fmt: skip
    assert done.returncode != 0
    zero, one = events(audit, 0), events(audit, 1)
    assert [e for e in one if e["kind"] == "write"] == []
    if how == "raise":
        assert "rank 1 cannot read" in done.stdout + done.stderr
        assert any(e["kind"] == "tracking" for e in one)  # to mark the run FAILED
        assert any(e["path"].endswith(".run.lock") for e in zero)  # rank 0 was training
    else:
        assert [e for e in one if e["kind"] == "tracking"] == []
        assert [e for e in zero if e["kind"] == "slept"] == []  # stopped in its sleep
    run = only_run(kedro_project)
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None


def test_a_failing_rank_marks_rank_0s_run_failed(kedro_project, monkeypatch):
    """What a rank other than 0 does on an error: rank 0's run (whose URI and id rank 0 sent
    before the first node) ends FAILED. Rank 0 leaves its run to kedro-mlflow."""
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("dmae_pipeline")
    hook = DistributedHook()
    for rank, status in (("0", "RUNNING"), ("1", "FAILED")):
        run_id = client.create_run(experiment).info.run_id
        hook._tracking = (os.environ["MLFLOW_TRACKING_URI"], run_id)
        monkeypatch.setenv("RANK", rank)
        hook.on_pipeline_error(RuntimeError("a node failed"))
        assert client.get_run(run_id).info.status == status


def test_a_run_still_active_at_exit_ends_failed(kedro_project, monkeypatch):
    """An interrupt (Ctrl-C, torchrun's SIGTERM) skips Kedro's error hooks; the run that
    TrackingHook started then ends FAILED at exit, where MLflow's own handler says FINISHED."""
    from dmae_pipeline.pipelines.data_prep import nodes

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nodes, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_kedro(kedro_project, "data_prep", "test")
    assert only_run(kedro_project).info.status == "RUNNING"
    (tracking,) = [hook for hook in HOOKS if isinstance(hook, TrackingHook)]
    tracking.fail_unfinished_run()  # what the process's exit runs
    assert only_run(kedro_project).info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    ("catalog_class", "valid"), [(DistributedCatalog, True), (DataCatalog, False)]
)
def test_rank_0_alone_saves_files_then_every_rank_waits(
    catalog_class, valid, tmp_path, monkeypatch
):
    """Each rank's saves, as the catalog sees them in a process group: rank 0 writes the file and
    waits, rank 1 only waits; in-memory values are each process's own. Kedro's DataCatalog is
    the wrong variant: every rank writes, none waits."""
    rank, barriers = 0, []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "is_main", lambda: rank == 0)
    monkeypatch.setattr(distributed, "barrier", lambda: barriers.append(rank))
    for rank in (1, 0):
        catalog = catalog_class(
            {"file": TorchFileDataset(str(tmp_path / f"file{rank}.pt")), "memory": MemoryDataset()}
        )
        catalog.save("file", {"rank": rank})
        catalog.save("memory", {"rank": rank})
        assert catalog.load("memory") == {"rank": rank}
    written = sorted(f.name for f in tmp_path.glob("*.pt"))
    assert (written == ["file0.pt"] and barriers == [1, 0]) == valid
