"""The node of the pretrain pipeline; the training stage is ``pipelines.stages.train_dmae``."""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure

from dmae_pipeline.params import PretrainParams
from dmae_pipeline.pipelines.stages import train_dmae


def pretrain_dmae(
    dataset_spec: dict[str, Any], train_split: dict[str, Any], params: PretrainParams
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """DMAE pretraining from scratch (or from a checkpoint file, ``pretrain.init``): the pipeline
    checkpoint, the released plain state dict and the reconstruction figure."""
    return train_dmae(dataset_spec, train_split, params, checkpoints={})
