"""The lr rule and schedule, on their own and as fit applies them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg

from dmae_pipeline.training import fit, load_checkpoint, lr_at, peak_lr


def test_peak_lr_scales_with_the_effective_batch():
    # The paper's ImageNet setting: blr 1.5e-4, effective batch 4096 -> 2.4e-3.
    assert peak_lr(1.5e-4, 256, 16) == pytest.approx(2.4e-3)
    assert peak_lr(1.5e-4, 4096, 1) == pytest.approx(2.4e-3)
    assert peak_lr(5e-4, 128, 1) == pytest.approx(2.5e-4)


def test_warmup_is_linear_from_zero():
    kw = {"lr": 1.0, "min_lr": 0.1, "warmup_epochs": 4, "epochs": 10}
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(1.0, **kw) == pytest.approx(0.25)
    assert lr_at(3.0, **kw) == pytest.approx(0.75)
    assert lr_at(4.0, **kw) == pytest.approx(1.0)


def test_cosine_decays_from_peak_to_min_lr():
    kw = {"lr": 1.0, "min_lr": 0.1, "warmup_epochs": 4, "epochs": 10}
    assert lr_at(7.0, **kw) == pytest.approx(0.55)  # half way: (lr + min_lr) / 2
    assert lr_at(5.5, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(10.0, **kw) == pytest.approx(0.1)
    values = [lr_at(4 + 6 * i / 50, **kw) for i in range(51)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_no_warmup_starts_at_peak():
    assert lr_at(0.0, lr=2.0, min_lr=0.0, warmup_epochs=0, epochs=5) == 2.0


def _last_lrs(tmp_path, name, param_groups_scales=None, **cfg):
    """fit for one warmup epoch; the lr of the last optimizer step, per param group."""
    model = make_mlp()
    groups = None
    if param_groups_scales is not None:
        params = list(model.parameters())
        groups = [
            {"params": params[:2], "lr_scale": param_groups_scales[0]},
            {"params": params[2:], "lr_scale": param_groups_scales[1]},
        ]
    config = tiny_cfg(epochs=1, warmup_epochs=1, blr=0.256, min_lr=0.0, **cfg)
    result = fit(
        model,
        JitteredSet(32),
        loss_fn=noisy_ce,
        cfg=config,
        run_dir=tmp_path / name,
        param_groups=groups,
    )
    state = load_checkpoint(tmp_path / name / "last.pt")
    return result["history"][-1]["lr"], [g["lr"] for g in state["optimizer"]["param_groups"]]


def test_fit_applies_scaled_lr_per_step_and_lr_scale(tmp_path):
    # 32 samples, one warmup epoch: the last of S steps runs at peak * (S - 1) / S,
    # with peak = 0.256 * batch_size * accum_iter / 256 = 0.001 * effective batch.
    lr, groups = _last_lrs(tmp_path, "b8", batch_size=8)  # S = 4
    assert lr == pytest.approx(0.008 * 3 / 4)
    assert groups == [pytest.approx(lr)] * 2  # decay and no-decay groups
    lr_acc, _ = _last_lrs(tmp_path, "b4a2", batch_size=4, accum_iter=2)  # S = 4
    assert lr_acc == pytest.approx(0.008 * 3 / 4)
    lr_small, _ = _last_lrs(tmp_path, "b4", batch_size=4)  # S = 8
    assert lr_small == pytest.approx(0.004 * 7 / 8)

    lr, groups = _last_lrs(tmp_path, "scaled", param_groups_scales=(0.5, 1.0), batch_size=8)
    assert groups == [pytest.approx(0.5 * lr), pytest.approx(lr)]


def test_set_lr_leaves_groups_without_scale_at_the_schedule_lr():
    from dmae_pipeline.training.schedule import set_lr

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr_scale": 0.25}, {"params": [b]}], lr=0.0)
    set_lr(opt, 0.4)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.4)]
