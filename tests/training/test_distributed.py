"""Data-parallel training: two CPU processes (gloo) against one process.

The processes are started once for the module (:mod:`distributed_runs`); each test compares what
they saved with a single-process run or with each other.
"""

from __future__ import annotations

import pytest
import torch
from distributed_runs import (
    ACCUMULATED,
    SPLIT,
    exact_fit,
    scenarios,
    spawn,
)

from dmae_pipeline import distributed
from dmae_pipeline.training import load_best

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """name -> [what rank 0 saved, what rank 1 saved]."""
    out = tmp_path_factory.mktemp("ddp")
    spawn(scenarios, out)

    def load(name):
        return [torch.load(out / f"{name}_rank{r}.pt", weights_only=False) for r in range(2)]

    return load, out


def _close(a, b):
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timing(history):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in history]


def test_single_process_helpers_describe_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_from_env()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(("name", "batch"), [("split", SPLIT), ("accumulated", ACCUMULATED)])
def test_steps_over_two_processes_equal_one_process_steps(ranks, tmp_path, name, batch):
    load, _ = ranks
    single = exact_fit(tmp_path, batch)
    for rank in load(name):
        assert _close(rank["model"], single["model"])
        assert not _equal(rank["model"], exact_fit(tmp_path / "other", dict(batch_size=4))["model"])
        for got, expected in zip(rank["history"], single["history"], strict=True):
            assert got["lr"] == expected["lr"]
            assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)


def test_gradients_are_all_reduced_once_per_step(ranks):
    load, _ = ranks
    # 64 samples, effective batch 16: 4 steps per epoch, 2 epochs; 2 micro-batches per step
    for rank in load("accumulated"):
        assert rank["losses"] == 2 * 4 * 2
        assert rank["calls"] == 2 * 4


def test_a_non_finite_loss_on_one_rank_stops_every_rank_unchanged(ranks):
    load, _ = ranks
    for rank in load("nan"):
        assert "NaN or infinite at epoch 2, step 13;" in rank["error"]
        assert _equal(rank["after"], rank["before"])


def test_resumed_run_equals_the_uninterrupted_one(ranks):
    load, _ = ranks
    for straight, resumed in zip(load("straight"), load("resumed"), strict=True):
        assert _equal(resumed["model"], straight["model"])
        assert _without_timing(resumed["result"]["history"]) == _without_timing(
            straight["result"]["history"]
        )
        assert resumed["noise_seeds"] == straight["noise_seeds"][2:]
    died = load("died")
    assert all(rank["result"] is None for rank in died)


def test_ranks_draw_their_own_noise_and_agree_on_everything_else(ranks):
    load, out = ranks
    zero, one = load("straight")
    assert len(set(zero["noise_seeds"]) | set(one["noise_seeds"])) == 2 * 4
    assert zero["result"] == one["result"]
    # the returned weights are the best epoch's (2) on every rank
    assert zero["result"]["best"]["epoch"] == 2
    best = load_best(out / "straight" / "best.pt")["model"]
    assert _equal(zero["model"], best) and _equal(one["model"], best)
    # train_loss is the mean over both ranks' micro-batches (8 per rank and epoch)
    for epoch, record in enumerate(zero["result"]["history"]):
        losses = (
            zero["losses"][8 * epoch : 8 * epoch + 8] + one["losses"][8 * epoch : 8 * epoch + 8]
        )
        assert record["train_loss"] == pytest.approx(sum(losses) / 16, rel=1e-12)


def test_rank_0_alone_evaluates_writes_and_reports(ranks):
    load, out = ranks
    for name in ("straight", "resumed"):
        zero, one = load(name)
        assert zero["records"] == zero["result"]["history"]
        assert one["records"] == [] and one["evaluations"] == 0
    assert zero["evaluations"] == 2  # the resumed run evaluates epochs 3 and 4
    saves = load("saves")
    assert saves[1] == []
    assert (
        saves[0] == [str(out / "straight" / "last.pt")] * 4 + [str(out / "resumed" / "last.pt")] * 4
    )
