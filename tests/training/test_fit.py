"""The training engine: accumulation, determinism, non-finite losses, model selection, MLflow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg
from torch.utils.data import TensorDataset

from dmae_pipeline.training import NonFiniteLossError, fit, load_best, load_checkpoint


def _linear_problem(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _mse(model, batch, generator):
    x, y = batch
    return F.mse_loss(model(x), y)


def _linear_fit(tmp_path, name, **cfg):
    """Final parameters, and the weight's .grad after every backward pass."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1)
    grads = []
    model.weight.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))
    config = tiny_cfg(epochs=2, warmup_epochs=1, blr=2.0, min_lr=0.0, **cfg)
    fit(model, _linear_problem(), loss_fn=_mse, cfg=config, run_dir=tmp_path / name)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), grads


def test_accumulation_matches_the_larger_batch(tmp_path):
    accumulated, acc_grads = _linear_fit(tmp_path, "acc", batch_size=4, accum_iter=2)
    large, large_grads = _linear_fit(tmp_path, "large", batch_size=8, accum_iter=1)
    small, _ = _linear_fit(tmp_path, "small", batch_size=4, accum_iter=1)
    # the gradient of the first step, accumulated over two half batches, is the batch mean's
    assert torch.allclose(acc_grads[1], large_grads[0], atol=1e-6)
    assert len(acc_grads) == 2 * len(large_grads)
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


def test_best_epoch_is_kept_and_loaded(tmp_path):
    scores = iter([0.2, 0.9, 0.4])
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
    assert [r["acc"] for r in result["history"]] == [0.2, 0.9, 0.4]
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


def test_finished_run_returns_the_stored_result_without_training(tmp_path):
    first = make_mlp()
    result = fit(first, JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(), run_dir=tmp_path)

    def no_training(*args):
        raise AssertionError("a finished run must not train again")

    again = make_mlp(seed=1)
    repeat = fit(again, JitteredSet(), loss_fn=no_training, cfg=tiny_cfg(), run_dir=tmp_path)
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
    calls = 0

    def dying_loss(model, batch, generator):
        nonlocal calls
        calls += 1
        return noisy_ce(model, batch, generator) * (float("nan") if calls == 17 else 1.0)

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
    calls = 0

    def dying_loss(model, batch, generator):
        nonlocal calls
        calls += 1
        return noisy_ce(model, batch, generator) * (float("nan") if calls == 25 else 1.0)

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
