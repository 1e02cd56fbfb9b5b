"""Nodes of the predict pipeline; the work is in ``dmae_pipeline.serving`` and
``dmae_pipeline.smoothing``.

Each model certifies this process's share of the images (every N-th under torchrun) into a log
in ``predict.log_dir`` named after the sigma, the ``fingerprint`` of what its rows depend on (a
rerun resumes only logs of its own) and the process; the merge, once every process is done, reads
every log of the fingerprint, however the images were split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dmae_pipeline import distributed
from dmae_pipeline.params import CertifyParams, PredictParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.serving import SmoothedClassifier, with_mode
from dmae_pipeline.serving.batch import predictions, read_inputs
from dmae_pipeline.smoothing import (
    UNLABELLED_LOG_COLUMNS,
    CertifySettings,
    certify_dataset,
    fingerprint,
    log_files,
    merge_shard_logs,
)
from dmae_pipeline.training import autocast_dtype, resolve_device

SETTINGS = ("n0", "n", "alpha", "batch_size", "seed")


def predict_images(
    finetuned_models: Mapping[str, Callable[[], Any]],
    dataset_spec: Mapping[str, Any],
    sigmas: list[float],
    radii: list[float],
    certify: CertifyParams,
    predict: PredictParams,
) -> dict[str, Any]:
    """Certify this process's share of the images at ``predict.input`` with the model of every
    sigma of ``predict.sigmas`` (None: ``finetune.sigmas``), as the settings of ``predict`` say,
    each one None taken from ``certify`` (sequential radii: ``report.radii``); every process
    waits for the others at the end.

    Returns the images and, per model, its sigma, class names and the path prefix of its logs,
    for ``merge_predictions``.
    """
    inputs = read_inputs(predict.input, dataset_spec)
    names = [sigma_label(sigma) for sigma in predict.sigmas or sigmas]
    missing = [name for name in names if name not in finetuned_models]
    if missing:
        raise FileNotFoundError(
            f"finetuned_models has no {', '.join(missing)} for predict.sigmas "
            f"{predict.sigmas or sigmas}: run the finetune pipeline first"
        )
    chosen = {**certify.model_dump(), **predict.model_dump(exclude_none=True)}
    settings = CertifySettings(**{key: chosen[key] for key in SETTINGS})
    settings = with_mode(settings, chosen["mode"], chosen.get("radii", radii))
    device = resolve_device(chosen["device"])
    classifiers = {  # every model is checked before any work
        name: SmoothedClassifier.from_checkpoint(
            finetuned_models[name](),
            dataset_spec,
            device=device,
            autocast_dtype=autocast_dtype(chosen["amp"], device),
        )
        for name in names
    }
    rank, world = distributed.rank(), distributed.world_size()
    share = range(len(inputs))[rank::world]
    plan = {}
    for name, classifier in classifiers.items():
        model = {"config": classifier.model.config, "weights": classifier.model.state_dict()}
        named = f"{name}-{fingerprint(settings, classifier.smooth, model, inputs.described)}-"
        prefix = Path(predict.log_dir) / named
        certify_dataset(
            classifier.smooth,
            inputs,
            share,
            settings,
            f"{prefix}rank_{rank}_of_{world}.tsv",
            others=log_files(prefix),
            progress=distributed.is_main(),
            labelled=False,
        )
        plan[name] = {
            "sigma": classifier.sigma,
            "class_names": classifier.class_names,
            "prefix": str(prefix),
        }
    distributed.barrier()
    return {"inputs": inputs, "models": plan}


def merge_predictions(prediction_logs: Mapping[str, Any]) -> pd.DataFrame:
    """Every model's logs as one table of the served model's rows (``idx``, ``file`` for a
    folder, then ``serving.COLUMNS``), sorted by sigma then idx."""
    inputs = prediction_logs["inputs"]
    tables = []
    for entry in prediction_logs["models"].values():
        paths, images = log_files(entry["prefix"]), [range(len(inputs))]
        log = merge_shard_logs(paths, images, UNLABELLED_LOG_COLUMNS, entry["sigma"])
        tables.append(predictions(log, inputs, entry["sigma"], entry["class_names"]))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["sigma", "idx"], kind="stable").reset_index(drop=True)
