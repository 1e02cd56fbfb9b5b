"""Nodes of the certify pipeline; the work is in ``dmae_pipeline.smoothing``.

The model of each configured sigma (``finetune.sigmas``; other partitions on disk are left alone)
certifies the selected test images (every ``skip``-th, at most ``max_images``), or one shard of
them, appending one row per image to a tab-separated log in ``log_dir``. A log's name carries a
fingerprint of everything its rows depend on (the model's weights, the test data, sigma, n0, n,
alpha, the seed, the noise layout, the device type and autocast), so a rerun resumes only a log
made with the same things, and a retrained model never reuses stale rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import state_digest
from dmae_pipeline.models import load_classifier
from dmae_pipeline.params import CertifyParams, FinetuneParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.smoothing import (
    NOISE_LAYOUT,
    Smooth,
    certify_dataset,
    merge_logs,
    shard_indices,
)
from dmae_pipeline.training import autocast_dtype, resolve_device

logger = logging.getLogger(__name__)


def certify_test_split(
    finetuned_models: Mapping[str, Callable[[], Any]],
    test_split: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    finetune: FinetuneParams,
    certify: CertifyParams,
) -> dict[str, dict[str, Any]]:
    """CERTIFY this shard of the selected test images with the model of every configured sigma.

    Returns, per model, its sigma and the log and image indices of every shard, for
    ``merge_certification_logs``.
    """
    names = [sigma_label(sigma) for sigma in finetune.sigmas]
    missing = [name for name in names if name not in finetuned_models]
    if missing:
        raise FileNotFoundError(
            f"finetuned_models has no {', '.join(missing)} for finetune.sigmas "
            f"{finetune.sigmas}: run the finetune pipeline first"
        )
    dataset = SplitDataset(test_split, build_transform(dataset_spec, train=False))
    shards = [
        shard_indices(len(dataset), certify.skip, certify.max_images, i, certify.num_shards)
        for i in range(certify.num_shards)
    ]
    device = resolve_device(certify.device)
    dtype = autocast_dtype(certify.autocast, device)
    settings = {
        **certify.model_dump(include={"n0", "n", "alpha", "seed"}),
        "noise": NOISE_LAYOUT,
        "device": device.type,
        "autocast": str(dtype),
        "spec": dict(dataset_spec),
    }
    models, plan = {}, {}
    log_dir, k = Path(certify.log_dir), certify.num_shards
    for name in names:  # every model is checked before any work
        checkpoint = finetuned_models[name]()
        models[name] = load_classifier(
            checkpoint,
            f"finetuned_models partition {name!r}",
            num_classes=dataset_spec["num_classes"],
            in_chans=dataset_spec["channels"],
        )
        fingerprint = _fingerprint(checkpoint, test_split, settings)
        plan[name] = {
            "sigma": float(checkpoint["sigma"]),
            "shards": [
                {"log": str(log_dir / f"{name}-{fingerprint}-shard_{i}_of_{k}.tsv"), "indices": s}
                for i, s in enumerate(shards)
            ],
        }

    for name, model in models.items():
        shard, sigma = plan[name]["shards"][certify.shard_index], plan[name]["sigma"]
        logger.info(
            "Certifying %s on %d test images (shard %d of %d) on %s; log %s",
            *(name, len(shard["indices"]), certify.shard_index, certify.num_shards, device),
            shard["log"],
        )
        smooth = Smooth(model.to(device), dataset_spec["num_classes"], sigma, autocast_dtype=dtype)
        certify_dataset(
            smooth,
            dataset,
            shard["indices"],
            certify.n0,
            certify.n,
            certify.alpha,
            certify.batch_size,
            shard["log"],
            certify.seed,
            device=device,
        )
        model.cpu()
    return plan


def _fingerprint(
    checkpoint: Mapping[str, Any], test_split: Mapping[str, Any], settings: Mapping[str, Any]
) -> str:
    """A short hash of the model's config and weights, the test split and the settings."""
    tensors = {key: test_split[key] for key in ("images", "labels") if key in test_split}
    described = {
        **settings,
        "sigma": float(checkpoint["sigma"]),
        "config": checkpoint["config"],
        "weights": state_digest(checkpoint["model"]),
        "data": state_digest(tensors),
        # on-disk splits: the file list, not the root, so that shards on other machines agree
        "paths": test_split.get("paths"),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def merge_certification_logs(certification_logs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Join every model's shard logs into one table with a ``sigma`` column, sorted by sigma
    then idx, keeping only the selected images.

    Refuses, naming the shards, while a shard's log is missing or incomplete (shards certified on
    other machines: copy their logs into the log folder and run the certify pipeline again).
    """
    tables = []
    for name, entry in certification_logs.items():
        shards = entry["shards"]
        count = len(shards)
        absent = [i for i, shard in enumerate(shards) if not Path(shard["log"]).is_file()]
        if absent:
            raise FileNotFoundError(
                f"{name}: no log for shard(s) {absent} of {count} "
                f"({[shards[i]['log'] for i in absent]}); certify them with "
                f"certify.shard_index=<shard> certify.num_shards={count}, or copy their logs "
                "there from the machines that ran them, then run the certify pipeline again"
            )
        log = pd.DataFrame(merge_logs(shard["log"] for shard in shards))
        done = set(log["idx"].tolist())
        lacking = {
            i: len(set(shard["indices"]) - done)
            for i, shard in enumerate(shards)
            if not set(shard["indices"]) <= done
        }
        if lacking:
            detail = ", ".join(
                f"shard {i} lacks {m} of {len(shards[i]['indices'])}" for i, m in lacking.items()
            )
            raise ValueError(
                f"{name}: the certification of {count} shard(s) is incomplete ({detail}); finish "
                f"them with certify.shard_index=<shard> certify.num_shards={count} (a rerun "
                "resumes), or copy their complete logs there, then run the certify pipeline again"
            )
        selected = {idx for shard in shards for idx in shard["indices"]}
        log = log[log["idx"].isin(selected)]
        tables.append(log.assign(sigma=entry["sigma"])[["sigma", *log.columns]])
    results = pd.concat(tables, ignore_index=True)
    return results.sort_values(["sigma", "idx"], kind="stable").reset_index(drop=True)
