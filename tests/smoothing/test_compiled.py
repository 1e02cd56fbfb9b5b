import logging

import pytest
import torch
from torch import nn

from dmae_pipeline.smoothing import CompiledClassifier, Smooth, certify_many

from .toys import GroupMaxModel, Recorder

CLASSES = 4
X = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, CLASSES)
    ).eval()


def fixed_and_sequential(model: nn.Module) -> list:
    """Fixed-n certificates of three seeds (n0 = 16 in a batch of its own, a partial last
    estimation batch) and pooled sequential ones of six inputs (a partial tail)."""
    smooth = Smooth(model, CLASSES, sigma=0.25)
    fixed = [
        smooth.certify_detailed(X + 0.1 * i, 16, 300, 0.01, 64, torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    items = [(i, X + 0.1 * i, torch.Generator().manual_seed(i)) for i in range(6)]
    pooled = dict(certify_many(smooth, items, 16, 2000, 0.01, 64, [0.0, 0.1, 0.2]))
    return [fixed, pooled]


@pytest.mark.slow
def test_compiled_certificates_equal_eager_ones():
    """Inductor on the CPU: the same counts, bounds and radii as the eager model."""
    eager = fixed_and_sequential(tiny_mlp())
    compiled = CompiledClassifier(tiny_mlp(), [16, 64])
    assert fixed_and_sequential(compiled) == eager
    assert compiled.compiled is not None and compiled.proven == {16, 64}


def test_batches_are_padded_to_the_compiled_lengths(monkeypatch):
    """The compiled model sees only the given lengths (or longer batches as they are); the
    padding's outputs are dropped, so the certificates are the eager model's."""
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: Recorder(model))
    eager = fixed_and_sequential(GroupMaxModel(CLASSES))
    compiled = CompiledClassifier(GroupMaxModel(CLASSES), [16, 64])
    assert fixed_and_sequential(compiled) == eager
    lengths = [len(batch) for batch in compiled.compiled.inputs]
    assert set(lengths) == {16, 64} and lengths.count(16) > 3  # selection, and the pool's tail
    assert len(compiled.compiled(torch.rand(100, 1, 4, 4))) == 100


class Failing(nn.Module):
    """A compiled model that raises when called, as a failing compiler does at the first call."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Failing.calls += 1
        raise RuntimeError("no C++ compiler")


def test_a_failed_compilation_warns_and_runs_eagerly(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: Failing())
    eager = fixed_and_sequential(GroupMaxModel(CLASSES))
    compiled = CompiledClassifier(GroupMaxModel(CLASSES), [16, 64])
    with caplog.at_level(logging.WARNING):
        assert fixed_and_sequential(compiled) == eager
    assert Failing.calls == 1 and compiled.compiled is None
    [record] = caplog.records
    assert "torch.compile failed (RuntimeError: no C++ compiler)" in record.getMessage()
    assert "certifying without compilation" in record.getMessage()

    def unavailable(model, **kwargs):
        raise RuntimeError("not supported on this platform")

    monkeypatch.setattr(torch, "compile", unavailable)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert fixed_and_sequential(CompiledClassifier(GroupMaxModel(CLASSES), [64])) == eager
    assert "not supported on this platform" in caplog.records[0].getMessage()
