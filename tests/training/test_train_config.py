"""Bad training settings stop before any work, with a message naming the key."""

from __future__ import annotations

import pytest
from tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg

from dmae_pipeline.training import fit, validate_cfg


def test_defaults_are_filled_and_numbers_normalized():
    cfg = validate_cfg(tiny_cfg(blr=1, betas=(0.9, 0.95)))
    assert cfg["blr"] == 1.0 and isinstance(cfg["blr"], float)
    assert cfg["betas"] == [0.9, 0.95]
    assert cfg["accum_iter"] == 1 and cfg["resume"] is True and cfg["amp"] == "auto"


@pytest.mark.parametrize(
    "key",
    ["epochs", "warmup_epochs", "blr", "min_lr", "batch_size", "weight_decay", "betas", "seed"],
)
def test_missing_required_key(key):
    cfg = tiny_cfg()
    del cfg[key]
    with pytest.raises(ValueError, match=f"missing required keys \\['{key}'\\]"):
        validate_cfg(cfg)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("epochs", True),
        ("batch_size", 0),
        ("accum_iter", 0),
        ("warmup_epochs", -1),
        ("warmup_epochs", 4),  # more than epochs
        ("blr", 0.0),
        ("blr", "1e-3"),
        ("min_lr", -1e-6),
        ("min_lr", 1.0),  # above the peak lr
        ("weight_decay", -0.1),
        ("betas", [0.9]),
        ("betas", [0.9, 1.0]),
        ("betas", "0.9,0.95"),
        ("clip_grad", 0.0),
        ("seed", -1),
        ("checkpoint_every", 0),
        ("resume", "yes"),
        ("num_workers", -1),
        ("num_threads", 0),
        ("device", 3),
        ("amp", "fp8"),
    ],
)
def test_invalid_value_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"cfg\\['{key}'\\]"):
        validate_cfg(tiny_cfg(**{key: value}))


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown keys \\['warmup'\\]"):
        validate_cfg(tiny_cfg(warmup=5))


def test_device_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="cfg\\['device'\\]"):
        fit(
            make_mlp(), JitteredSet(), loss_fn=noisy_ce, cfg=tiny_cfg(device="tpu"),
            run_dir=tmp_path,
        )  # fmt: skip


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
