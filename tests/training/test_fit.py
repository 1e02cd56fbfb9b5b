"""The training engine: accumulation, determinism, non-finite losses, model selection, MLflow."""

from __future__ import annotations

import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg
from torch.utils.data import TensorDataset

from dmae_pipeline.training import NonFiniteLossError, engine, fit, load_best, load_checkpoint


def _linear_problem(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _initial_linear():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Linear(6, 1)


def _linear_fit(tmp_path, name, **cfg):
    """Final parameters, the weight's .grad after every backward pass, and the batches."""
    model = _initial_linear()
    grads, batches = [], []
    model.weight.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))

    def loss_fn(model, batch, generator):
        batches.append(batch)
        x, y = batch
        return F.mse_loss(model(x), y)

    config = tiny_cfg(epochs=2, warmup_epochs=1, blr=2.0, min_lr=0.0, **cfg)
    fit(model, _linear_problem(), loss_fn=loss_fn, cfg=config, run_dir=tmp_path / name)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), grads, batches


# 64 samples: 8 steps of 2 micro-batches per epoch, or 5 steps of 3 (4 samples left over)
@pytest.mark.parametrize("accum", [2, 3])
def test_accumulation_matches_the_larger_batch(tmp_path, accum):
    accumulated, acc_grads, batches = _linear_fit(tmp_path, "acc", batch_size=4, accum_iter=accum)
    large, large_grads, _ = _linear_fit(tmp_path, "large", batch_size=4 * accum, accum_iter=1)
    small, *_ = _linear_fit(tmp_path, "small", batch_size=4, accum_iter=1)
    # the gradient of the first step, accumulated over its micro-batches, is the mean loss's
    x, y = (torch.cat(parts) for parts in zip(*batches[:accum], strict=True))
    reference = _initial_linear()
    F.mse_loss(reference(x), y).backward()
    assert torch.allclose(acc_grads[accum - 1], reference.weight.grad, atol=1e-6)
    assert torch.allclose(acc_grads[accum - 1], large_grads[0], atol=1e-6)
    assert len(acc_grads) == accum * len(large_grads) == accum * 2 * (64 // (4 * accum))
    assert torch.allclose(accumulated, large, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(small, large, atol=1e-3)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_with_data_workers(tmp_path):
    def run(name, seed):
        model = make_mlp()
        cfg = tiny_cfg(epochs=2, num_workers=1, seed=seed)
        fit(model, JitteredSet(), loss_fn=noisy_ce, cfg=cfg, run_dir=tmp_path / name)
        return _weights(model)

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert _same(first, again)
    assert not _same(first, other)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda loss: loss * float("nan"),  # NaN gradients too
        lambda loss: loss + float("inf"),  # finite gradients: only the loss tells
    ],
    ids=["nan", "inf"],
)
def test_non_finite_loss_stops_before_it_changes_a_weight(tmp_path, spoil):
    # 64 samples, batch 4, accum 2: 8 steps of 2 micro-batches per epoch. Call 22 is the second
    # micro-batch of step 11 (epoch 2); the first micro-batch of that step is already summed.
    last = tmp_path / "last.pt"
    calls, saved = 0, {}

    def loss_fn(model, batch, generator):
        nonlocal calls
        calls += 1
        if calls == 17:  # first micro-batch of epoch 2
            saved["checkpoint"] = last.read_bytes()
        if calls == 21:  # first micro-batch of step 11
            saved["weights"] = _weights(model)
        loss = noisy_ce(model, batch, generator)
        return spoil(loss) if calls == 22 else loss

    model = make_mlp()
    cfg = tiny_cfg(batch_size=4, accum_iter=2, clip_grad=1.0)
    with pytest.raises(NonFiniteLossError, match="NaN or infinite at epoch 2, step 11;") as err:
        fit(model, JitteredSet(), loss_fn=loss_fn, cfg=cfg, run_dir=tmp_path)
    assert isinstance(err.value, FloatingPointError)
    assert str(last) in str(err.value)
    # the check waits for the end of the epoch, yet steps 11 to 16 changed nothing
    assert calls == 32
    assert _same(_weights(model), saved["weights"])
    assert last.read_bytes() == saved["checkpoint"]
    assert load_checkpoint(last)["epoch"] == 1


def _nan_at(call: int):
    """noisy_ce, made NaN at the given call; the number of calls so far in ``calls[0]``."""
    calls = [0]

    def loss_fn(model, batch, generator):
        calls[0] += 1
        return noisy_ce(model, batch, generator) * (float("nan") if calls[0] == call else 1.0)

    return loss_fn, calls


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    loss_fn, _ = _nan_at(1)
    message = r"^\[s\] the loss is NaN .* epoch 1, step 1;.* Last good checkpoint: none yet$"
    with pytest.raises(NonFiniteLossError, match=message):
        fit(make_mlp(), JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(), run_dir=tmp_path,
            log_prefix="[s] ")  # fmt: skip


def test_a_long_epoch_stops_within_sync_every_micro_batches(tmp_path):
    # 512 samples, batch 4: an epoch of 128 micro-batches; the flag is read after the 50th
    loss_fn, calls = _nan_at(3)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3;"):
        fit(make_mlp(), JitteredSet(512), loss_fn=loss_fn, cfg=tiny_cfg(batch_size=4),
            run_dir=tmp_path)  # fmt: skip
    assert calls[0] == engine.SYNC_EVERY


def test_a_parameter_without_gradient_in_a_step_is_left_alone(tmp_path):
    # no momentum and no weight decay for a parameter that a step does not use
    model = make_mlp()
    model.extra = torch.nn.Parameter(torch.ones(3))
    seen = []

    def loss_fn(model, batch, generator):
        seen.append(model.extra.detach().clone())
        loss = noisy_ce(model, batch, generator)
        return loss + model.extra.square().sum() if len(seen) <= 2 else loss  # steps 1 and 2

    fit(model, JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(epochs=2), run_dir=tmp_path)
    assert not torch.equal(seen[2], seen[0])
    assert all(torch.equal(value, seen[2]) for value in [*seen[3:], model.extra.detach()])


def test_best_epoch_is_kept_and_loaded(tmp_path):
    scores = iter([0.2, 0.9, 0.9])  # a later tie does not replace the best epoch
    modes = []

    def evaluate(model):
        modes.append((model.training, torch.is_grad_enabled()))
        return {"acc": next(scores), "loss_val": 1.0}

    def loss_fn(model, batch, generator):
        assert model.training
        return noisy_ce(model, batch, generator)

    model = make_mlp()
    result = fit(
        model, JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(), run_dir=tmp_path,
        evaluate=evaluate, select_metric="acc",
    )  # fmt: skip
    assert modes == [(False, False)] * 3
    assert [r["acc"] for r in result["history"]] == [0.2, 0.9, 0.9]
    assert result["best"] == result["history"][1]
    best = load_best(tmp_path / "best.pt")
    assert best["best"]["epoch"] == 2
    assert _same(best["model"], model.state_dict())
    assert not _same(load_checkpoint(tmp_path / "last.pt")["model"], model.state_dict())


def test_evaluate_must_provide_the_selected_metric(tmp_path):
    with pytest.raises(ValueError, match=r"select_metric='acc' is not among .*'top1'"):
        fit(
            make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(), run_dir=tmp_path,
            evaluate=lambda m: {"top1": 0.5}, select_metric="acc",
        )  # fmt: skip


def test_finished_run_returns_the_stored_result_without_training(tmp_path, caplog):
    first = make_mlp()
    result = fit(first, JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(), run_dir=tmp_path)
    assert result["best"] == result["history"][-1]  # no select_metric: the last epoch

    def no_training(*args):
        raise AssertionError("a finished run must not train again")

    again = make_mlp(seed=1)
    with caplog.at_level("INFO", logger=engine.__name__):
        repeat = fit(again, JitteredSet(), loss_fn=no_training, cfg=tiny_cfg(), run_dir=tmp_path)
    assert f"{tmp_path / 'last.pt'}: training already finished" in caplog.messages
    assert repeat == result
    assert _same(_weights(first), again.state_dict())


def test_resume_refuses_other_settings_and_resume_off_starts_over(tmp_path):
    fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=1), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other training settings \(blr: 0.5 -> 0.25\).*resume"):
        fit(
            make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=1, blr=0.25),
            run_dir=tmp_path,
        )  # fmt: skip
    with pytest.raises(ValueError, match="trained on 64 samples, this train_set has 48"):
        fit(make_mlp(), JitteredSet(48), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=1),
            run_dir=tmp_path)  # fmt: skip
    # runtime-only keys may change
    fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, run_dir=tmp_path,
        cfg=tiny_cfg(epochs=1, num_threads=2, checkpoint_every=5))  # fmt: skip
    result = fit(
        make_mlp(), JitteredSet(), loss_fn=noisy_ce, run_dir=tmp_path,
        cfg=tiny_cfg(epochs=2, blr=0.25, resume=False),
    )  # fmt: skip
    assert len(result["history"]) == 2
    assert load_checkpoint(tmp_path / "last.pt")["cfg"]["blr"] == 0.25


def test_fp16_is_refused_on_the_cpu(tmp_path):
    with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device"):
        fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(amp="fp16"),
            run_dir=tmp_path)  # fmt: skip


def test_bf16_autocast_on_the_cpu_trains(tmp_path):
    dtypes = []

    def loss_fn(model, batch, generator):
        dtypes.append(model[0](batch[0]).dtype)
        return noisy_ce(model, batch, generator)

    result = fit(make_mlp(), JitteredSet(), loss_fn=loss_fn, run_dir=tmp_path,
                 cfg=tiny_cfg(epochs=1, amp="bf16"))  # fmt: skip
    assert set(dtypes) == {torch.bfloat16}
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_on_epoch_gets_every_record_also_those_of_a_resumed_run(tmp_path):
    cfg = tiny_cfg(epochs=3)
    dying_loss, _ = _nan_at(17)

    def evaluate(model):
        return {"val_acc": 0.5}

    first = []
    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        fit(make_mlp(), JitteredSet(), loss_fn=dying_loss, cfg=cfg, run_dir=tmp_path,
            evaluate=evaluate, on_epoch=first.append)  # fmt: skip
    assert [r["epoch"] for r in first] == [1, 2]
    assert set(first[0]) == {"epoch", "train_loss", "lr", "images_per_s", "val_acc"}

    resumed = []
    result = fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=cfg, run_dir=tmp_path,
                 evaluate=evaluate, on_epoch=resumed.append)  # fmt: skip
    assert resumed == result["history"]
    assert resumed[:2] == first

    # a finished run, asked again, replays its records
    again = []
    fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=cfg, run_dir=tmp_path,
        evaluate=evaluate, on_epoch=again.append)  # fmt: skip
    assert again == result["history"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_uses_bf16_and_a_device_generator(tmp_path):
    seen = []

    def loss_fn(model, batch, generator):
        seen.append((batch[0].device.type, generator.device.type, torch.get_autocast_dtype("cuda"),
                     torch.is_autocast_enabled("cuda")))  # fmt: skip
        return noisy_ce(model, batch, generator)

    cfg = tiny_cfg(device="auto", epochs=2)
    first = make_mlp()
    fit(first, JitteredSet(), loss_fn=loss_fn, cfg=cfg, run_dir=tmp_path / "a")
    assert set(seen) == {("cuda", "cuda", torch.bfloat16, True)}
    assert next(first.parameters()).device.type == "cuda"
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert all(g["fused"] for g in state["optimizer"]["param_groups"])


def test_resume_keeps_a_best_epoch_saved_after_the_last_checkpoint(tmp_path):
    # Epoch 3 is the best and is saved to best.pt; the run dies in epoch 4 with last.pt from
    # epoch 2. On resume, epoch 3 scores lower (as on a non-deterministic device): best.pt and
    # its record must still win, so the weights and the reported best agree.
    cfg = tiny_cfg(epochs=4, checkpoint_every=2)
    scores = iter([0.1, 0.2, 0.9])
    dying_loss, _ = _nan_at(25)

    with pytest.raises(NonFiniteLossError, match="epoch 4"):
        fit(make_mlp(), JitteredSet(), loss_fn=dying_loss, cfg=cfg, run_dir=tmp_path,
            evaluate=lambda m: {"acc": next(scores)}, select_metric="acc")  # fmt: skip
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    saved_best = load_best(tmp_path / "best.pt")
    assert saved_best["best"]["epoch"] == 3

    rescores = iter([0.5, 0.3])
    model = make_mlp()
    result = fit(model, JitteredSet(), loss_fn=noisy_ce, cfg=cfg, run_dir=tmp_path,
                 evaluate=lambda m: {"acc": next(rescores)}, select_metric="acc")  # fmt: skip
    assert result["best"] == saved_best["best"]
    assert _same(saved_best["model"], model.state_dict())
    assert [r["acc"] for r in result["history"]] == [0.1, 0.2, 0.5, 0.3]


class IndexSet(torch.utils.data.Dataset):
    """Sample i is (the feature i, the label i), so that a batch tells which samples it holds."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), i


def _epoch_orders(tmp_path, name, seed, epochs=3):
    """The sample indices of each epoch, in the order the loss saw them."""
    seen = []

    def loss_fn(model, batch, generator):
        seen.extend(batch[1].tolist())
        return model(batch[0] / 32).square().mean()

    cfg = tiny_cfg(epochs=epochs, batch_size=4, accum_iter=2, seed=seed)
    fit(torch.nn.Linear(1, 1), IndexSet(32), loss_fn=loss_fn, cfg=cfg, run_dir=tmp_path / name)
    return [seen[e * 32 : (e + 1) * 32] for e in range(epochs)]


def test_data_order_changes_every_epoch_and_repeats_for_a_seed(tmp_path):
    orders = _epoch_orders(tmp_path, "a", seed=0)
    assert all(sorted(order) == list(range(32)) for order in orders)
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    assert _epoch_orders(tmp_path, "b", seed=0) == orders
    assert _epoch_orders(tmp_path, "c", seed=1) != orders


def _first_draws(seed: int, rank: int, epoch: int) -> dict[str, float]:
    """The first number each random stream gives after the engine seeds ``epoch`` on ``rank``."""
    model = make_mlp()
    trainer = engine._Trainer(
        model, JitteredSet(), noisy_ce, torch.optim.SGD(model.parameters()),
        torch.amp.GradScaler("cpu"), tiny_cfg(seed=seed), device=torch.device("cpu"),
        amp_dtype=None, micro_batch=8, accum=1, steps_per_epoch=8, log_prefix="",
        last_path=Path("last.pt"),
    )  # fmt: skip
    trainer.rank = rank  # as in process ``rank`` of a torchrun run
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        trainer.seed_epoch(epoch)
        draws = {
            "torch": torch.rand(()).item(),
            "numpy": np.random.rand(),
            "python": random.random(),
            "noise": torch.rand((), generator=trainer.noise).item(),
            "workers": torch.rand((), generator=trainer.loader.generator).item(),
        }
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    return draws


def test_every_random_stream_is_reseeded_from_seed_rank_and_epoch():
    draws = _first_draws(seed=0, rank=0, epoch=1)
    assert _first_draws(seed=0, rank=0, epoch=1) == draws
    assert len(set(draws.values())) == len(draws)
    for other in (_first_draws(1, 0, 1), _first_draws(0, 1, 1), _first_draws(0, 0, 2)):
        assert all(other[stream] != draws[stream] for stream in draws)


def test_the_loss_draws_from_a_generator_reseeded_every_epoch(tmp_path):
    seeds = []

    def loss_fn(model, batch, generator):
        seeds.append(generator.initial_seed())
        return noisy_ce(model, batch, generator)

    fit(make_mlp(), JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(), run_dir=tmp_path)
    per_epoch = [set(seeds[e * 8 : (e + 1) * 8]) for e in range(3)]
    assert [len(s) for s in per_epoch] == [1, 1, 1]
    assert len(set.union(*per_epoch)) == 3


def _timed_loss(monkeypatch):
    """noisy_ce on a clock that only the loss moves: each micro-batch takes 0.5 s."""
    clock = [100.0]
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def loss_fn(model, batch, generator):
        clock[0] += 0.5
        return noisy_ce(model, batch, generator)

    return loss_fn


def test_the_epoch_log_line_and_its_throughput(tmp_path, monkeypatch, caplog):
    # 8 micro-batches of 8 images per epoch: 4 s
    with caplog.at_level("INFO", logger=engine.__name__):
        result = fit(make_mlp(), JitteredSet(), loss_fn=_timed_loss(monkeypatch), cfg=tiny_cfg(),
                     run_dir=tmp_path, evaluate=lambda m: {"acc": 0.5, "loss_val": 1.25},
                     log_prefix="[a] ")  # fmt: skip
    assert [r["images_per_s"] for r in result["history"]] == [16.0] * 3
    lines = [m for m in caplog.messages if "img/s" in m]
    # the ETA counts down the epochs still to run
    assert len(lines) == 3
    for epoch, (line, eta) in enumerate(zip(lines, ["00:08", "00:04", "00:00"], strict=True), 1):
        expected = (
            rf"\[a\] epoch {epoch}/3  train_loss \d+\.\d{{4}}  lr \S+  16\.0 img/s  "
            rf"acc 0\.5  loss_val 1\.25  ETA {eta}"
        )
        assert re.fullmatch(expected, line), line


def test_a_resumed_run_times_only_its_own_epochs(tmp_path, monkeypatch, caplog):
    loss_fn, _ = _nan_at(17)  # the first micro-batch of epoch 3: last.pt holds epoch 2
    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        fit(make_mlp(), JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(epochs=4), run_dir=tmp_path)
    caplog.clear()  # the first run's lines, where logging is already at INFO
    with caplog.at_level("INFO", logger=engine.__name__):
        fit(make_mlp(), JitteredSet(), loss_fn=_timed_loss(monkeypatch), cfg=tiny_cfg(epochs=4),
            run_dir=tmp_path)  # fmt: skip
    etas = [m.rsplit("ETA ", 1)[1] for m in caplog.messages if "img/s" in m]
    assert etas == ["00:04", "00:00"]  # epochs 3 and 4, 4 s each


def test_evaluate_may_not_use_the_engine_s_names(tmp_path):
    with pytest.raises(ValueError, match=r"metric names \['lr'\] are reserved"):
        fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(), run_dir=tmp_path,
            evaluate=lambda m: {"acc": 0.5, "lr": 0.1})  # fmt: skip


def test_train_loss_is_the_mean_over_micro_batches(tmp_path):
    losses = []

    def loss_fn(model, batch, generator):
        loss = noisy_ce(model, batch, generator)
        losses.append(loss.item())
        return loss

    # 64 samples, effective batch 4 * 4: 4 optimizer steps of 4 micro-batches per epoch
    cfg = tiny_cfg(epochs=2, batch_size=4, accum_iter=4)
    result = fit(make_mlp(), JitteredSet(), loss_fn=loss_fn, cfg=cfg, run_dir=tmp_path)
    assert len(losses) == 2 * 16
    for record, epoch_losses in zip(result["history"], (losses[:16], losses[16:]), strict=True):
        assert record["train_loss"] == pytest.approx(sum(epoch_losses) / 16, rel=1e-12)


def test_the_optimizer_is_fused_also_over_given_groups(tmp_path):
    model = make_mlp()
    groups = [
        {"params": list(model[0].parameters()), "lr_scale": 0.5},
        {"params": list(model[3].parameters()) + list(model[4].parameters()), "lr_scale": 1.0},
    ]
    fit(model, JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=1), run_dir=tmp_path,
        param_groups=groups)  # fmt: skip
    saved = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in saved] == [0.5, 1.0]
    assert all(g["fused"] for g in saved)


class FailingCompiled(torch.nn.Module):
    """What torch.compile returns where compilation fails: an error at the first call."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        torch.rand(3)  # draws before failing, as a partly traced model may
        raise RuntimeError("no working compiler")


def test_compile_falls_back_to_eager_training_with_a_warning(tmp_path, monkeypatch, caplog):
    eager = make_mlp()
    fit(eager, JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=2), run_dir=tmp_path / "a")
    monkeypatch.setattr(torch, "compile", FailingCompiled)
    fallback = make_mlp()
    with caplog.at_level("WARNING"):
        fit(fallback, JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=2, compile=True),
            run_dir=tmp_path / "b")  # fmt: skip
    assert "torch.compile failed (RuntimeError: no working compiler)" in caplog.text
    # the failed first call drew noise and dropout: the retry draws them again
    assert _same(_weights(fallback), _weights(eager))


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path, caplog):
    kinds = set()

    def loss_fn(model, batch, generator):
        kinds.add(type(model).__name__)
        return noisy_ce(model, batch, generator)

    def run(name, compile):
        with torch.random.fork_rng():
            torch.manual_seed(0)  # no dropout: compiled code draws its own random numbers
            model = torch.nn.Sequential(
                torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                torch.nn.Linear(16, 3),
            )  # fmt: skip
        fit(model, JitteredSet(), loss_fn=loss_fn, run_dir=tmp_path / name,
            cfg=tiny_cfg(epochs=2, compile=compile))  # fmt: skip
        return _weights(model)

    eager = run("eager", False)
    with caplog.at_level("WARNING"):
        compiled = run("compiled", True)
    assert "torch.compile failed" not in caplog.text
    assert kinds == {"Sequential", "OptimizedModule"}
    assert all(torch.allclose(compiled[k], eager[k], atol=1e-5) for k in eager)
