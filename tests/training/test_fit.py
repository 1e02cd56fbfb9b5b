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


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    calls, saved = 0, {}

    def loss_fn(model, batch, generator):
        nonlocal calls
        calls += 1
        if calls == 9:  # first micro-batch of epoch 2 (8 per epoch)
            saved["bytes"] = last.read_bytes()
        loss = noisy_ce(model, batch, generator)
        return loss * float("nan") if calls == 11 else loss

    model = make_mlp()
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, step 11") as err:
        fit(model, JitteredSet(), loss_fn=loss_fn, cfg=tiny_cfg(), run_dir=tmp_path)
    assert isinstance(err.value, FloatingPointError)
    assert str(last) in str(err.value)
    assert last.read_bytes() == saved["bytes"]
    assert load_checkpoint(last)["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
    with pytest.raises(ValueError, match="cfg\\['amp'\\]: 'fp16' needs a CUDA device"):
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


def test_mlflow_gets_per_epoch_metrics_only_from_an_active_run(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment("engine")

        def evaluate(model):
            return {"val_acc": 0.5}

        with mlflow.start_run() as run:
            result = fit(
                make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=2),
                run_dir=tmp_path / "a", evaluate=evaluate, log_prefix="sigma_0.25/",
            )  # fmt: skip
        client = mlflow.MlflowClient()
        logged = client.get_run(run.info.run_id).data.metrics
        assert set(logged) == {
            f"sigma_0.25/{k}" for k in ("train_loss", "lr", "images_per_s", "val_acc")
        }
        history = client.get_metric_history(run.info.run_id, "sigma_0.25/train_loss")
        assert [(h.step, h.value) for h in history] == [
            (r["epoch"], pytest.approx(r["train_loss"])) for r in result["history"]
        ]

        # a finished run asked again inside another MLflow run logs its stored curves there
        with mlflow.start_run() as rerun:
            fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=2),
                run_dir=tmp_path / "a", evaluate=evaluate, log_prefix="sigma_0.25/")  # fmt: skip
        steps = client.get_metric_history(rerun.info.run_id, "sigma_0.25/val_acc")
        assert [h.step for h in steps] == [1, 2]

        # no active run: training goes on and nothing is logged anywhere
        fit(make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(epochs=1),
            run_dir=tmp_path / "b")  # fmt: skip
        runs = client.search_runs([run.info.experiment_id])
        assert {r.info.run_id for r in runs} == {run.info.run_id, rerun.info.run_id}
        assert len(client.get_metric_history(run.info.run_id, "sigma_0.25/lr")) == 2
    finally:
        mlflow.set_tracking_uri(None)


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
    assert "cuda" in state["rng"]


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
