"""`dvc plots show --html-template` with scripts/vega_template.py's page draws offline: the page
carries Vega itself and loads nothing from a CDN."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def run(*args, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def test_dvc_plots_page_carries_vega_and_loads_nothing(tmp_path):
    pytest.importorskip("vl_convert")
    template = tmp_path / "offline.html"
    run(sys.executable, PROJECT_ROOT / "scripts" / "vega_template.py", template, cwd=tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "curve.csv").write_text("radius,certified_accuracy\n0,0.9\n0.5,0.6\n")
    (repo / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: radius\n")
    run("git", "init", "-q", cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    run("dvc", "plots", "show", "--html-template", template, "-o", "out", cwd=repo)
    page = (repo / "out" / "index.html").read_text()
    assert "<script src" not in page
    assert "window.vegaEmbed" in page and "vegaEmbed('#curve_csv', spec)" in page
