"""The engine's settings record, the batch split over processes and fit's own preconditions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg

from dmae_pipeline.training import RUNTIME_KEYS, TrainConfig, fit, resolve_device, split_batch


def test_defaults_and_immutability():
    cfg = TrainConfig(
        epochs=2, warmup_epochs=0.5, blr=1e-3, min_lr=0.0, batch_size=8, weight_decay=0.05,
        betas=(0.9, 0.95), seed=0, checkpoint_every=1,
    )  # fmt: skip
    assert (cfg.accum_iter, cfg.clip_grad, cfg.resume, cfg.num_workers, cfg.num_threads) == (
        1, None, True, 0, None,
    )  # fmt: skip
    assert (cfg.device, cfg.amp, cfg.compile) == ("auto", "auto", False)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.epochs = 3


def test_only_runtime_settings_may_change_on_resume():
    stored = tiny_cfg().model_dump()
    assert tiny_cfg().changed_since(stored) == []
    runtime = tiny_cfg(
        resume=False, checkpoint_every=5, num_workers=2, num_threads=4, device="auto",
        compile=True,
    )  # fmt: skip
    assert runtime.changed_since(stored) == []
    assert tiny_cfg(blr=0.1, accum_iter=2).changed_since(stored) == ["accum_iter", "blr"]
    # a checkpoint written before the settings were a pydantic model holds betas as a tuple
    assert tiny_cfg().changed_since({**stored, "betas": (0.9, 0.95)}) == []
    assert set(tiny_cfg().fingerprint()) == set(TrainConfig.model_fields) - RUNTIME_KEYS


@pytest.mark.parametrize(
    ("batch_size", "accum_iter", "world_size", "expected"),
    [
        (64, 4, 1, (64, 4)),
        (64, 4, 2, (64, 2)),  # the world size divides accum_iter: fewer micro-batches
        (64, 4, 4, (64, 1)),
        (64, 1, 2, (32, 1)),  # otherwise the micro-batch is split
        (64, 3, 2, (48, 2)),  # 96 per process, in the fewest micro-batches of at most 64
        (10, 3, 2, (5, 3)),
        (8, 2, 16, (1, 1)),
    ],
)
def test_split_batch_keeps_the_effective_batch(batch_size, accum_iter, world_size, expected):
    micro, count = split_batch(batch_size, accum_iter, world_size)
    assert (micro, count) == expected
    assert micro * count * world_size == batch_size * accum_iter
    assert micro <= batch_size


def test_split_batch_refuses_an_uneven_split():
    with pytest.raises(ValueError, match=r"batch_size \* accum_iter = 6 \* 1 = 6 .* over 4 proc"):
        split_batch(6, 1, 4)


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("tpu")
    with pytest.raises(ValidationError, match="device"):
        tiny_cfg(device="tpu")


def test_dataset_smaller_than_one_step(tmp_path):
    with pytest.raises(ValueError, match="batch_size \\* accum_iter = 32 exceeds the 16"):
        fit(
            make_mlp(), JitteredSet(16), loss_fn=noisy_ce,
            cfg=tiny_cfg(batch_size=16, accum_iter=2), run_dir=tmp_path,
        )  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_select_metric_needs_evaluate(tmp_path):
    with pytest.raises(ValueError, match="select_metric='acc' needs an evaluate"):
        fit(
            make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(), run_dir=tmp_path,
            select_metric="acc",
        )  # fmt: skip
