"""OpenMP's wait policy is passive by default, set before any command imports torch: threads
that spin while they wait for each other run several times slower on a busy machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import copy_project

pytestmark = pytest.mark.slow

# The kedro CLI, recording OMP_WAIT_POLICY at the moment torch is first imported.
KEDRO_RECORDING_TORCH_IMPORT = """
import os, sys
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "policy" not in globals():
            globals()["policy"] = os.environ.get("OMP_WAIT_POLICY")
sys.meta_path.insert(0, Recorder())
from kedro.framework.cli import main
sys.argv = ["kedro", "registry", "list"]
try:
    main()
finally:
    print("POLICY AT TORCH IMPORT:", globals().get("policy", "torch not imported"))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_kedro_starts_openmp_passive_unless_the_user_says_otherwise(tmp_path, given, expected):
    project = copy_project(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"OMP_WAIT_POLICY": given} if given else {}
    done = subprocess.run(
        [sys.executable, "-c", KEDRO_RECORDING_TORCH_IMPORT],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert f"POLICY AT TORCH IMPORT: {expected}\n" in done.stdout, done.stdout + done.stderr
