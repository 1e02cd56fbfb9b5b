"""The node of the cifar_pretrain pipeline: the pretrain stage's DMAE training
(``pipelines.stages.train_dmae``), continued from the pretrain checkpoint or a released DMAE file,
on the downstream data at its native resolution (upsampled to the model's after the noise)."""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure

from dmae_pipeline.params import CifarPretrainParams
from dmae_pipeline.pipelines.stages import train_dmae


def continue_pretraining(
    dataset_spec: dict[str, Any],
    train_split: dict[str, Any],
    pretrained_model: dict[str, Any] | None,
    params: CifarPretrainParams,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """Continued DMAE pretraining from ``cifar_pretrain.init``: the pipeline checkpoint, the
    released plain state dict and the reconstruction figure."""
    return train_dmae(dataset_spec, train_split, params, {"pretrain": pretrained_model})
