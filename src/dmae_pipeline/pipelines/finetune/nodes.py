"""The node of the finetune pipeline: one noise-augmented ViT classifier per sigma.

The work is in ``dmae_pipeline.models`` (the classifier, its initial weights),
``dmae_pipeline.training`` (the engine, the noise + consistency loss, accuracy under noise) and
``training_stages``.

A partition of ``finetuned_models`` keeps the weights under 'model' and the epoch under 'epoch',
as the released finetuned files do, so loaders of that format read it. The exact released file
({'model', 'epoch', 'args'}) is one call away::

    model = build_classifier(**p["config"])
    model.load_state_dict(p["model"])
    export_finetuned(model, "dmae_vit_sigma_0.25.pth", epoch=p["epoch"], args={"sigma": 0.25})
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.models import build_classifier, check_architecture, cpu_state
from dmae_pipeline.params import FinetuneParams
from dmae_pipeline.reporting.names import format_value, sigma_label
from dmae_pipeline.training import (
    accuracy_evaluator,
    check_run_dir,
    noisy_classification_loss,
    param_groups,
    provenance,
)
from dmae_pipeline.training_stages import (
    dataset_fields,
    initial_model,
    initial_weights,
    train,
)

logger = logging.getLogger(__name__)

NEW_KEYS = ("head.", "fc_norm.")  # the only classifier weights a DMAE/MAE checkpoint lacks
COLUMNS = ["sigma", "epoch", "clean_acc", "noisy_acc"]


def finetune_classifiers(
    dataset_spec: dict[str, Any],
    train_split: dict[str, Any],
    val_split: dict[str, Any],
    pretrained_model: dict[str, Any] | None,
    cifar_pretrained_model: dict[str, Any] | None,
    params: FinetuneParams,
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Finetune one classifier per sigma; keep each at its best noisy validation accuracy.

    Returns the partitions ``sigma_<sigma>`` -> {"model", "config", "sigma", "epoch", "val",
    "init", "params", "provenance"} and the validation table (sigma as the tables write it,
    "0.50"; epoch, clean_acc, noisy_acc of the kept epochs).
    Every run folder is checked before the first run starts. The test split is not an input.
    """
    checkpoints = {"pretrain": pretrained_model, "cifar_pretrain": cifar_pretrained_model}
    state, base, source = initial_weights(params, checkpoints, dataset_spec)
    config = params.architecture(
        {**base, **dataset_fields(dataset_spec)}, dataset_spec["num_classes"]
    )
    check_architecture(config, "finetune.model")
    train_set = SplitDataset(
        train_split, build_transform(dataset_spec, True, params.augment.transform_args())
    )
    val_set = SplitDataset(val_split, build_transform(dataset_spec, False))
    trained_on = provenance(dataset_spec, state)
    common = {
        "init": params.init,
        "init_sha256": trained_on["init_sha256"],
        "data": trained_on["splits"],
        "classifier": config,
        "layer_decay": params.layer_decay,
        "augment": params.augment.transform_args(),
        "eval": params.eval.model_dump(),
    }
    runs = {sigma_label(loss["sigma"]): loss for loss in params.losses()}
    for name, loss in runs.items():  # a stale run folder stops the node before any training
        check_run_dir(run_dir(params, name), {**common, "loss": loss}, params.train.resume)

    partitions, rows = {}, []
    for name, loss in runs.items():
        model = initial_model(build_classifier, config, params, state, NEW_KEYS)
        logger.info("finetune %s: classifier from %s", name, source)
        best = train(
            model,
            train_set,
            params,
            run_dir(params, name),
            {**common, "loss": loss},
            loss_fn=noisy_classification_loss(num_classes=dataset_spec["num_classes"], **loss),
            name=f"finetune/{name}",
            param_groups=param_groups(model, params.train.weight_decay, params.layer_decay),
            evaluate=accuracy_evaluator(
                val_set,
                sigma=loss["sigma"],
                batch_size=params.eval.batch_size,
                seed=params.eval.seed,
                num_workers=params.train.num_workers,
                prefix="val_",
            ),
            select_metric="val_noisy_acc",
        )["best"]
        val = {"clean_acc": best["val_clean_acc"], "noisy_acc": best["val_noisy_acc"]}
        logger.info(
            "finetune %s: kept epoch %d, validation accuracy %.4f clean, %.4f under noise",
            name,
            best["epoch"],
            val["clean_acc"],
            val["noisy_acc"],
        )
        epoch = int(best["epoch"])
        partitions[name] = {
            "model": cpu_state(model),
            "config": model.config,
            "sigma": loss["sigma"],
            "epoch": epoch,
            "val": val,
            "init": params.init,
            "params": params.model_dump(mode="json"),  # what it was trained with, for MLflow
            "provenance": trained_on,
        }
        rows.append({"sigma": format_value(loss["sigma"]), "epoch": epoch, **val})
    return partitions, pd.DataFrame(rows, columns=COLUMNS)


def run_dir(params: FinetuneParams, name: str) -> Path:
    return Path(params.run_dir) / f"run_{name}"
