"""Runs of ``fit`` in a group of CPU processes (gloo), as torchrun would start them.

:func:`spawn` starts the processes with torchrun's environment; :func:`scenarios` runs, in every
process, the data-parallel runs that ``test_distributed.py`` compares with single-process runs,
and saves what each rank saw to ``out/<name>_rank<r>.pt``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from dmae_pipeline import distributed
from dmae_pipeline.training import NonFiniteLossError, engine, fit

WORLD_SIZE = 2
# cfgs of the exact-comparison runs: (batch_size, accum_iter) -> per process (4, 1) and (4, 2)
SPLIT = dict(batch_size=8, accum_iter=1)
ACCUMULATED = dict(batch_size=4, accum_iter=4)
SCORES = {1: 0.1, 2: 0.7, 3: 0.3, 4: 0.5}  # the metric of each epoch: epoch 2 is the best
NAN_CALL = 13  # rank 1's loss call in epoch 2 (8 calls per epoch and rank) that returns NaN


def spawn(fn, *args) -> None:
    """``fn(*args)`` in WORLD_SIZE processes joined in one process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_entry, args=(port, fn, args), nprocs=WORLD_SIZE, join=True)


def _entry(rank: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE),
        RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        distributed.destroy()


def linear_problem(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def linear_model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Linear(6, 1)


def mse(model, batch, generator):
    x, y = batch
    return F.mse_loss(model(x), y)


def exact_fit(run_dir: Path, batch: dict, loss_fn=mse) -> dict:
    """A deterministic run (no noise, no dropout, no augmentation): final weights and history."""
    model = linear_model()
    cfg = tiny_cfg(epochs=2, warmup_epochs=1, blr=2.0, min_lr=0.0, clip_grad=1.0, **batch)
    result = fit(model, linear_problem(), loss_fn=loss_fn, cfg=cfg, run_dir=run_dir)
    return {"model": model.state_dict(), "history": result["history"]}


def scenarios(out: Path) -> None:
    rank = distributed.rank()

    def save(name: str, value) -> None:
        torch.save(value, out / f"{name}_rank{rank}.pt")

    save("split", exact_fit(out / "split", SPLIT))

    hook = {"calls": 0, "losses": 0}

    def counting_mse(model, batch, generator):
        if hook["losses"] == 0 and isinstance(model, DistributedDataParallel):
            model.register_comm_hook(hook, _counting_allreduce)
        hook["losses"] += 1
        return mse(model, batch, generator)

    save("accumulated", {**exact_fit(out / "accumulated", ACCUMULATED, counting_mse), **hook})

    # NaN on rank 1 only: both ranks stop, neither changed a weight from that step on
    calls, before = 0, {}

    def nan_on_rank_1(model, batch, generator):
        nonlocal calls
        calls += 1
        if calls == NAN_CALL:
            before.update({k: v.clone() for k, v in model.module.state_dict().items()})
        loss = noisy_ce(model, batch, generator)
        return loss * float("nan") if rank == 1 and calls == NAN_CALL else loss

    model = make_mlp()
    try:
        fit(model, JitteredSet(), loss_fn=nan_on_rank_1, cfg=tiny_cfg(), run_dir=out / "nan")
        error = None
    except NonFiniteLossError as e:
        error = str(e)
    save("nan", {"error": error, "before": before, "after": model.state_dict()})

    # An uninterrupted run and a run that dies in epoch 3 (with last.pt from epoch 2), resumed
    saves = []
    engine_save = engine.save_checkpoint
    engine.save_checkpoint = lambda path, **kw: (saves.append(str(path)), engine_save(path, **kw))
    save("straight", resumable(out / "straight", die_at=None))
    save("died", resumable(out / "resumed", die_at=2 * 8 + 3))
    save("resumed", resumable(out / "resumed", die_at=None))
    engine.save_checkpoint = engine_save
    save("saves", saves)


def resumable(run_dir: Path, die_at: int | None) -> dict:
    """4 epochs with noise, dropout and jittered data, select_metric and evaluate: what this
    rank saw and got (a run dying at loss call ``die_at`` stops with a NonFiniteLossError)."""
    seen = {"losses": [], "noise_seeds": [], "evaluations": 0, "records": []}

    def loss_fn(model, batch, generator):
        if len(seen["losses"]) % 8 == 0:
            seen["noise_seeds"].append(generator.initial_seed())
        loss = noisy_ce(model, batch, generator)
        seen["losses"].append(loss.item())
        return loss * float("nan") if len(seen["losses"]) == die_at else loss

    def evaluate(model):
        assert not isinstance(model, DistributedDataParallel)
        seen["evaluations"] += 1
        epoch = len(seen["records"]) + 1  # on_epoch, too, runs on rank 0 only
        return {"acc": SCORES[epoch]}

    model = make_mlp()
    cfg = tiny_cfg(epochs=4, checkpoint_every=1)
    try:
        result = fit(
            model, JitteredSet(), loss_fn=loss_fn, cfg=cfg, run_dir=run_dir, evaluate=evaluate,
            select_metric="acc", on_epoch=seen["records"].append,
        )  # fmt: skip
    except NonFiniteLossError:
        result = None
    return {**seen, "result": result, "model": model.state_dict()}


def _counting_allreduce(state: dict, bucket):
    state["calls"] += 1
    return allreduce_hook(None, bucket)
