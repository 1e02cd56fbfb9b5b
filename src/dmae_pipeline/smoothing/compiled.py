"""The base classifier under ``torch.compile`` for certification: static shapes, eager where
compilation fails."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)


class CompiledClassifier(nn.Module):
    """``model`` compiled with static shapes, for ``Smooth``.

    Each batch is padded with zeros to the smallest of ``batch_sizes`` that holds it, and the
    padding's outputs are dropped, so the compiled model sees those lengths only: each compiles
    once, at its first batch, and a partial batch (the end of an image's samples, the end of a
    pool) compiles nothing new. A batch longer than all of them runs at its own length. The padding
    needs a model whose output for a sample does not depend on the rest of its batch, as ``Smooth``
    does (a model in eval mode). Where compilation fails, when wrapping or at a length's first
    batch, a warning names the error and the model runs eagerly from then on.

    :param model: the base classifier
    :param batch_sizes: the batch lengths to compile for (``CertifySettings.batch_lengths``)
    """

    def __init__(self, model: nn.Module, batch_sizes: Iterable[int]):
        super().__init__()
        self.model = model
        self.batch_sizes = sorted(set(batch_sizes))
        self.proven: set[int] = set()  # lengths whose compiled call has succeeded
        try:
            self.compiled = torch.compile(model, dynamic=False)
        except Exception as e:  # whatever the compiler raises, e.g. on an unsupported platform
            self._fall_back(e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.model(x)
        size = next((b for b in self.batch_sizes if b >= len(x)), len(x))
        padded = torch.cat((x, x.new_zeros(size - len(x), *x.shape[1:]))) if size > len(x) else x
        if size in self.proven:
            return self.compiled(padded)[: len(x)]
        try:
            logits = self.compiled(padded)[: len(x)]
        except Exception as e:  # whatever the compiler raises
            self._fall_back(e)
            return self.model(x)
        self.proven.add(size)
        return logits

    def _fall_back(self, error: Exception) -> None:
        logger.warning(
            "torch.compile failed (%s: %s); certifying without compilation",
            type(error).__name__,
            error,
        )
        self.compiled = None
