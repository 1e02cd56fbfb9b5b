"""Killing a run and resuming it gives bit-identical weights to an uninterrupted run (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_training import KILL_ENV, KILLED_EXIT_CODE, resume_run

from dmae_pipeline.training import load_checkpoint

HELPER = Path(__file__).with_name("tiny_training.py")


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "images_per_s"} for rec in history]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.delenv(KILL_ENV, raising=False)
    # 64 samples, batch 8, accum 2 -> 8 loss calls per epoch; call 27 is inside epoch 4,
    # and with checkpoint_every=2 the last checkpoint is from epoch 2.
    killed = subprocess.Popen(
        [sys.executable, str(HELPER), str(tmp_path / "run"), str(tmp_path / "unused.pt")],
        env={**os.environ, KILL_ENV: "27"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Meanwhile, the uninterrupted run, in this process.
    assert resume_run(tmp_path / "straight", tmp_path / "straight.pt") == 5 * 8
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == KILLED_EXIT_CODE, stderr
    assert not (tmp_path / "unused.pt").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2

    # Resumed here too: the restore must also overwrite the global RNG state left behind.
    assert resume_run(tmp_path / "run", tmp_path / "resumed.pt") == 3 * 8

    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert straight["model"].keys() == resumed["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert _comparable(straight["history"]) == _comparable(resumed["history"])
    assert [rec["epoch"] for rec in resumed["history"]] == [1, 2, 3, 4, 5]
