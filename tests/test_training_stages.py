"""What the training stages share: the engine's run in a claimed folder, its log lines named after
the stage."""

from __future__ import annotations

from types import SimpleNamespace

from dmae_pipeline.training import engine
from dmae_pipeline.training_stages import train
from training.tiny_training import JitteredSet, make_mlp, noisy_ce, tiny_cfg


def test_log_lines_start_with_the_stage_name_then_a_colon(tmp_path, caplog):
    """ "pretrain: data/06_models/...", never "pretrain/data/06_models/..." (a path that does not
    exist)."""
    params = SimpleNamespace(train=tiny_cfg(epochs=1))
    run = {"loss_fn": noisy_ce, "name": "pretrain"}
    with caplog.at_level("INFO", logger=engine.__name__):
        train(make_mlp(), JitteredSet(), params, tmp_path, {}, **run)
        train(make_mlp(), JitteredSet(), params, tmp_path, {}, **run)  # finished: no training
    assert any(m.startswith("pretrain: epoch 1/1 ") for m in caplog.messages)
    assert f"pretrain: {tmp_path / 'last.pt'}: training already finished" in caplog.messages
