"""The run record keeps a changed run from resuming a checkpoint it did not write."""

from __future__ import annotations

import pytest
import torch

from dmae_pipeline.io import state_digest
from dmae_pipeline.training import check_run_dir, claim_run_dir
from dmae_pipeline.training.checkpoint import LAST


def test_state_digest_follows_the_weights_not_the_wrapper():
    state = {"w": torch.zeros(3), "b": torch.ones(2)}
    assert state_digest(state) == state_digest({"model": state, "epoch": 4})
    changed = {**state, "w": torch.tensor([0.0, 0.0, 1e-7])}
    assert state_digest(changed) != state_digest(state)


def test_a_checkpoint_of_other_settings_is_refused_and_resume_off_starts_over(tmp_path):
    claim_run_dir(tmp_path, {"model": {"width": 8}}, resume=True)
    (tmp_path / LAST).write_bytes(b"checkpoint")
    check_run_dir(tmp_path, {"model": {"width": 8}}, resume=True)
    with pytest.raises(
        ValueError,
        match=r"holds a run with other settings \(model\): model\.width: 8 -> 16; delete it to "
        r"start this run over \(other runs still resume\), or turn resume off to start every",
    ):
        claim_run_dir(tmp_path, {"model": {"width": 16}}, resume=True)
    claim_run_dir(tmp_path, {"model": {"width": 16}}, resume=False)
    assert not (tmp_path / LAST).exists()


def test_a_checkpoint_without_a_record_is_not_resumed(tmp_path):
    (tmp_path / LAST).write_bytes(b"checkpoint")
    with pytest.raises(ValueError, match=r"model\.width: None -> 8"):
        check_run_dir(tmp_path, {"model": {"width": 8}}, resume=True)


def test_only_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it for the second process
    (tmp_path / LAST).write_bytes(b"checkpoint")
    claim_run_dir(tmp_path, {"model": {"width": 8}}, resume=False)
    assert (tmp_path / LAST).exists()
    assert not (tmp_path / "run.json").exists()
    with pytest.raises(ValueError, match=r"model\.width: None -> 8"):
        claim_run_dir(tmp_path, {"model": {"width": 8}}, resume=True)
