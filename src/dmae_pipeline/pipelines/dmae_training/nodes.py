"""Nodes of the DMAE-training pipeline: ``train_dmae``, behind one node per stage that types the
stage's parameter block (Kedro validates a block by the annotation of the node that reads it)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.models import DMAE, build_dmae, check_architecture, cpu_state
from dmae_pipeline.params import CifarPretrainParams, PretrainParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.reporting.reconstruction import reconstruction_figure
from dmae_pipeline.training import Stream, derive_seed, provenance
from dmae_pipeline.training_stages import (
    dataset_fields,
    initial_model,
    initial_weights,
    train,
)

logger = logging.getLogger(__name__)


def pretrain_dmae(
    dataset_spec: dict[str, Any], train_split: dict[str, Any], params: PretrainParams
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """pretrain: from scratch or from a checkpoint file (``pretrain.init``)."""
    return train_dmae(dataset_spec, train_split, params, checkpoints={})


def continue_pretraining(
    dataset_spec: dict[str, Any],
    train_split: dict[str, Any],
    pretrained_model: dict[str, Any] | None,
    params: CifarPretrainParams | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """cifar_pretrain: from the pretrain checkpoint or a released DMAE file
    (``cifar_pretrain.init``), on the downstream data at its native resolution (upsampled to the
    model's after the noise). ``params`` is None where an env leaves the block out (ImageNet):
    kedro viz validates every registered pipeline's blocks, and a run stops before this node."""
    return train_dmae(dataset_spec, train_split, params, {"pretrain": pretrained_model})


def train_dmae(
    dataset_spec: Mapping[str, Any],
    train_split: Mapping[str, Any],
    params: PretrainParams,
    checkpoints: Mapping[str, Mapping[str, Any] | None],
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Figure]:
    """Train a DMAE on ``train_split`` from ``params.init`` (pretrain and cifar_pretrain).

    Returns the pipeline checkpoint {"model", "config", "epoch", "params", "provenance"}, the
    released plain state dict and the reconstruction figure of the first ``figure_images``
    training images.
    """
    state, base, source = initial_weights(params, checkpoints, dataset_spec)
    config = params.architecture({**base, **dataset_fields(dataset_spec)})
    check_architecture(config, f"{params.block}.model")
    model = initial_model(build_dmae, config, params, state)
    transform = build_transform(dataset_spec, train=True, augment=params.augment.transform_args())
    train_set = SplitDataset(train_split, transform)
    logger.info(
        "%s: DMAE %s (%.2fM parameters, %s, mask ratio %g) from %s on %d images",
        params.block,
        config["preset"],
        sum(p.numel() for p in model.parameters()) / 1e6,
        sigma_label(model.sigma),
        model.mask_ratio,
        source,
        len(train_set),
    )
    trained_on = provenance(dataset_spec, state)
    fingerprint = {
        "model": model.config,
        "augment": params.augment.transform_args(),
        "dataset": {k: dataset_spec[k] for k in ("name", "image_size", "channels", "split_sizes")},
        "data": trained_on["splits"],
        "init": trained_on["init_sha256"],
    }
    history = train(
        model,
        train_set,
        params,
        Path(params.run_dir),
        fingerprint,
        loss_fn=dmae_loss,
        name=params.block,
    )["history"]
    logger.info(
        "%s: train_loss %.4f (epoch 1) -> %.4f (epoch %d)",
        params.block,
        history[0]["train_loss"],
        history[-1]["train_loss"],
        history[-1]["epoch"],
    )
    shown = SplitDataset(train_split, build_transform(dataset_spec, train=False))
    images = torch.stack([shown[i][0] for i in range(min(params.figure_images, len(shown)))])
    generator = torch.Generator().manual_seed(derive_seed(params.train.seed, Stream.FIGURE))
    state = cpu_state(model)
    checkpoint = {
        "model": state,
        "config": model.config,
        "epoch": history[-1]["epoch"],
        "params": params.model_dump(mode="json"),  # what it was trained with, for MLflow
        "provenance": trained_on,
    }
    return checkpoint, state, reconstruction_figure(model, images, params.block, generator)


def dmae_loss(model: DMAE, batch: tuple, generator: torch.Generator) -> torch.Tensor:
    """The training engine's loss_fn: the DMAE's own reconstruction loss on the batch images."""
    return model(batch[0], generator=generator)[0]
