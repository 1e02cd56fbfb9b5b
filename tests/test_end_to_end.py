"""The whole default chain as a user drives it: `dvc repro`, `mlflow server`, `kedro viz build`.

One temporary git copy of the project runs the chain once (on the test env's settings, written
into conf/base since DVC tracks the base env only) and every test here reads from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from kedro.config import OmegaConfigLoader

from conftest import PROJECT_ROOT, copy_project
from dmae_pipeline.settings import CONFIG_LOADER_ARGS

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = ["data_prep", "pretrain", "cifar_pretrain", "finetune", "certify", "report", "publish"]


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def settle_env_into_base(conf: Path, env: str) -> None:
    """Rewrite conf/base so that the base env holds what ``env`` runs: Kedro merges ``env`` onto
    base, and each base catalog and parameter file gets the merged value of its blocks."""
    loader = OmegaConfigLoader(str(conf), env=env, **CONFIG_LOADER_ARGS)
    for key in ("catalog", "parameters"):
        merged = loader[key]
        for path in sorted((conf / "base").glob(f"{key}*.yml")):
            blocks = yaml.safe_load(path.read_text()) or {}
            path.write_text(yaml.safe_dump({block: merged.pop(block) for block in blocks}))
        if merged:  # blocks only the env defines
            (conf / "base" / f"{key}_{env}.yml").write_text(yaml.safe_dump(merged))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """A git + DVC copy of the project whose base settings are the test env's, after `dvc repro`
    run with KEDRO_ENV=test, which the stages must ignore."""
    project = copy_project(tmp_path_factory.mktemp("chain") / "project")
    settle_env_into_base(project / "conf", "test")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    shutil.copytree(PROJECT_ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp"))
    shutil.copytree(PROJECT_ROOT / "src", project / "src", dirs_exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "scripts", project / "scripts")
    sh("git", "init", "-q", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=project)
    log = sh("dvc", "repro", cwd=project, env={"KEDRO_ENV": "test"})
    project.joinpath("first_repro.log").write_text(log)
    return project


def cached_files(project: Path, out: str) -> list[str]:
    """The files DVC cached for a folder output, from its .dir manifest."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (md5,) = [
        o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == out
    ]
    manifest = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    return sorted(entry["relpath"] for entry in json.loads(manifest.read_text()))


def test_dvc_repro_runs_every_stage_then_nothing(chain):
    log = (chain / "first_repro.log").read_text()
    assert ran_stages(log) == STAGES
    quiet = ("Downloading artifacts", "Validating input example", "Creating initial MLflow")
    assert not [line for line in quiet if line in log]
    assert (chain / "dvc.lock").exists()
    assert ran_stages(sh("dvc", "repro", cwd=chain)) == []
    metrics = json.loads((chain / "data/08_reporting/certified_accuracy.json").read_text())
    assert any(k.startswith("best/") for k in metrics)
    assert "certified_accuracy" in sh("dvc", "plots", "show", "--json", cwd=chain)
    # one MLflow run per stage, linked by the `dvc repro` that ran them
    client = mlflow.MlflowClient(f"sqlite:///{chain / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["dvc_stage"] for r in runs) == sorted(STAGES)
    assert len({r.data.tags["dvc_repro"] for r in runs}) == 1


def test_dvc_caches_checkpoints_and_exports_but_not_training_runs(chain):
    for stage in ("pretrain", "cifar_pretrain"):
        assert cached_files(chain, f"data/06_models/{stage}") == ["dmae.pt", "dmae_pretrained.pth"]
        assert (chain / f"data/06_models/{stage}/run/last.pt").exists()
    params = yaml.safe_load((chain / "conf/base/parameters_finetune.yml").read_text())
    finetuned = cached_files(chain, "data/06_models/finetune")
    assert len(finetuned) == len(params["finetune"]["sigmas"])
    assert all(f.startswith("sigma_") and f.endswith(".pt") and "/" not in f for f in finetuned)
    assert len(list((chain / "data/06_models/finetune").glob("run_sigma_*/last.pt"))) == len(
        finetuned
    )


def test_finetune_parameter_change_reruns_only_downstream_from_scratch(chain):
    """A finished run in the run folder would refuse the new seed: DVC must have deleted it."""
    path = chain / "conf/base/parameters_finetune.yml"
    params = yaml.safe_load(path.read_text())
    params["finetune"]["train"]["seed"] += 1
    path.write_text(yaml.safe_dump(params))
    assert ran_stages(sh("dvc", "repro", cwd=chain)) == ["finetune", "certify", "report", "publish"]


def certification_logs(project: Path) -> dict[str, bytes]:
    logs = sorted((project / "data/07_model_output/certify").glob("*.tsv"))
    return {path.name: path.read_bytes() for path in logs}


def test_certify_reruns_resume_the_kept_logs_and_ignore_the_batch_size(chain):
    """DVC keeps the logs (persist) and their fingerprint decides: a rerun for a code change or
    a new fixed-mode radius certifies nothing again, and a new batch size reruns no certification
    (publish serves with it)."""
    logs = certification_logs(chain)
    assert logs
    path = chain / "conf/base/parameters_certify.yml"
    params = yaml.safe_load(path.read_text())
    assert params["certify"]["mode"] == "fixed"
    params["certify"]["batch_size"] += 1
    path.write_text(yaml.safe_dump(params))
    assert ran_stages(sh("dvc", "repro", cwd=chain)) == ["publish"]
    path = chain / "conf/base/parameters_report.yml"
    params = yaml.safe_load(path.read_text())
    params["report"]["radii"] = sorted({*params["report"]["radii"], 0.05})
    path.write_text(yaml.safe_dump(params))
    with (chain / "src/dmae_pipeline/smoothing/core.py").open("a") as f:
        f.write("# edited\n")
    assert ran_stages(sh("dvc", "repro", cwd=chain)) == ["certify", "report", "publish"]
    assert certification_logs(chain) == logs  # byte for byte, times included: all resumed


def set_report_parameter(project: Path, key: str, value) -> None:
    path = project / "conf/base/parameters_report.yml"
    params = yaml.safe_load(path.read_text())
    params["report"][key] = value
    path.write_text(yaml.safe_dump(params))


def test_dvc_commit_after_kedro_run_records_it_and_repro_reruns_nothing(chain):
    """A clone has no dvc.lock: `kedro run` then `dvc commit -f` makes every stage done."""
    (chain / "dvc.lock").unlink()
    set_report_parameter(chain, "confidence", 0.9)
    sh("kedro", "run", "--pipelines=report", cwd=chain)
    assert "Data and pipelines are up to date" not in sh("dvc", "status", cwd=chain)
    sh("dvc", "commit", "--force", cwd=chain)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=chain)
    assert ran_stages(sh("dvc", "repro", cwd=chain)) == []


def repro_without_kedro(project: Path, *targets: str) -> subprocess.CompletedProcess:
    """`dvc repro` from a shell that did not activate the virtual environment: no kedro on PATH."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "kedro").exists()]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    command = [BIN / "dvc", "repro", *targets]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


def test_dvc_repro_finds_kedro_in_the_projects_venv_without_activating_it(chain):
    venv = chain / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "kedro").symlink_to(BIN / "kedro")
    try:
        set_report_parameter(chain, "confidence", 0.8)
        done = repro_without_kedro(chain)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ran_stages(done.stdout) == ["report", "publish"]
    finally:
        shutil.rmtree(chain / ".venv")


def test_dvc_repro_without_kedro_says_what_to_do_and_checkout_restores_the_outputs(chain):
    report = chain / "data/08_reporting/certified_accuracy.md"
    before = report.read_bytes()
    set_report_parameter(chain, "confidence", 0.7)
    done = repro_without_kedro(chain, "report")
    assert done.returncode != 0
    assert "kedro not found on PATH nor in .venv: activate" in done.stdout + done.stderr
    set_report_parameter(chain, "confidence", 0.8)
    sh("dvc", "checkout", cwd=chain)
    assert report.read_bytes() == before
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=chain)


def test_a_clone_pulls_every_output_and_has_nothing_to_rerun(chain, tmp_path):
    """Training runs are neither pushed nor needed: the pulled outputs make every stage done."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    sh("git", "add", "-A", cwd=chain)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", cwd=chain)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=chain)
    sh("dvc", "push", cwd=chain)
    sh("git", "clone", "-q", str(chain), str(clone), cwd=tmp_path)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=clone)
    sh("dvc", "pull", cwd=clone)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)
    assert (clone / "data/08_reporting/certified_accuracy.json").exists()
    assert not list((clone / "data/06_models").glob("*/run*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_server_serves_the_certified_accuracy_curves(chain):
    port = free_port()
    server = subprocess.Popen(
        [BIN / "mlflow", "server", "--backend-store-uri", "sqlite:///mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=chain, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        for _ in range(120):
            try:
                experiments = get_json(f"{base}/experiments/search", {"max_results": 10})
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer on 127.0.0.1 within 60 s")
        ids = [e["experiment_id"] for e in experiments["experiments"]]
        runs = get_json(f"{base}/runs/search", {"experiment_ids": ids, "max_results": 100})["runs"]
        # KEDRO_ENV=test was set for `dvc repro`: the stages ran the base env all the same
        staged = [r for r in runs if "dvc_stage" in {t["key"] for t in r["data"]["tags"]}]
        assert staged and {r["info"]["run_name"].partition(" @ ")[2] for r in staged} == {"base"}
        report = next(r for r in runs if r["info"]["run_name"].startswith("report"))
        metrics = {m["key"] for m in report["data"]["metrics"]}
        assert any(k.startswith("report/certified_accuracy/best/") for k in metrics)
        curve = next(
            k for k in metrics if k.startswith("report/certified_accuracy_vs_radius_x100/")
        )
        history = get_json(
            f"{base}/metrics/get-history?run_id={report['info']['run_id']}&metric_key={curve}"
        )["metrics"]
        assert len(history) > 1
        # each run of the publish stage registered a version of every certified model
        registered = get_json(f"{base}/registered-models/search?max_results=10")
        sigmas = yaml.safe_load((chain / "conf/base/parameters_finetune.yml").read_text())
        assert {m["name"] for m in registered["registered_models"]} == {
            f"dmae_digits_sigma_{sigma:.2f}" for sigma in sigmas["finetune"]["sigmas"]
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_kedro_viz_build_exports_every_pipeline(chain):
    output = sh("kedro", "viz", "build", cwd=chain)
    assert "Cannot find" not in output  # every pipeline's parameters are in the base env
    site = chain / "build"
    assert (site / "index.html").exists()
    main = json.loads((site / "api" / "main").read_text())
    registered = {p["id"] for p in main["pipelines"]}
    assert set(STAGES) <= registered
    for stage in STAGES:
        assert (site / "api" / "pipelines" / stage).exists()
    # one collapsible group (namespace) per stage, holding the stage's nodes
    groups = main["modular_pipelines"]
    assert set(STAGES) <= set(groups)
    names = {node["id"]: node["name"] for node in main["nodes"]}
    tasks = {names[c["id"]] for c in groups["certify"]["children"] if c["type"] == "task"}
    assert tasks == {"certify_test_split", "merge_certification_logs"}
