"""Nodes of the certify pipeline; the work is in ``dmae_pipeline.smoothing``.

Each configured sigma's model (``finetune.sigmas``; other partitions on disk are left alone)
certifies its share of the selected test images into a log in ``log_dir``, named after the shard,
the process (under torchrun) and a fingerprint of everything the rows depend on: the model's
weights, the test data, sigma, the mode, n0, n, alpha, the seed, the noise layout, the device type
and autocast, and in sequential mode the sequential test, the radii and ``stop_at_selection``. A
rerun resumes only logs of the same fingerprint, and the merge reads all of them, however the
images were split. ``batch_size`` and ``compile`` are left out: they change how forward passes
are scheduled, not what they compute (up to floating-point rounding, which may flip a near-tie).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dmae_pipeline import distributed
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import state_digest
from dmae_pipeline.models import load_classifier
from dmae_pipeline.params import CertifyParams, FinetuneParams, ReportParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.smoothing import (
    NOISE_LAYOUT,
    SEQUENTIAL_TEST,
    CompiledClassifier,
    IncompleteCertificationError,
    Smooth,
    certify_dataset,
    log_files,
    merge_shard_logs,
    shard_indices,
)
from dmae_pipeline.training import autocast_dtype, resolve_device


def certify_test_split(
    finetuned_models: Mapping[str, Callable[[], Any]],
    test_split: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    finetune: FinetuneParams,
    certify: CertifyParams,
    report: ReportParams,
) -> dict[str, dict[str, Any]]:
    """CERTIFY this shard of the selected test images with the model of every configured sigma,
    this process's share of them under torchrun; every process waits for the others at the end.

    Returns, per model, its sigma, the path prefix of its logs and the image indices of every
    shard, for ``merge_certification_logs``.
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
    radii = report.radii if certify.mode == "sequential" else None
    settings = {
        **certify.model_dump(include={"mode", "n0", "n", "alpha", "seed", "stop_at_selection"}),
        **({"test": SEQUENTIAL_TEST, "radii": radii} if radii else {}),
        "noise": NOISE_LAYOUT,
        "device": device.type,
        "autocast": str(dtype),
        "spec": dict(dataset_spec),
    }
    models, plan = {}, {}
    for name in names:  # every model is checked before any work
        checkpoint = finetuned_models[name]()
        models[name] = load_classifier(
            checkpoint,
            f"finetuned_models partition {name!r}",
            num_classes=dataset_spec["num_classes"],
            in_chans=dataset_spec["channels"],
        )
        prefix = f"{name}-{_fingerprint(checkpoint, test_split, settings)}-"
        plan[name] = {
            "sigma": float(checkpoint["sigma"]),
            "prefix": str(Path(certify.log_dir) / prefix),
            "shards": shards,
        }

    rank, world = distributed.rank(), distributed.world_size()
    part = f"shard_{certify.shard_index}_of_{certify.num_shards}"
    part += f"-rank_{rank}_of_{world}" if world > 1 else ""
    # static shapes for torch.compile: full batches, and fixed-n selection's
    lengths = [certify.batch_size, *([] if radii else [min(certify.n0, certify.batch_size)])]
    for name, model in models.items():
        log, sigma = f"{plan[name]['prefix']}{part}.tsv", plan[name]["sigma"]
        base = CompiledClassifier(model, lengths) if certify.compile else model
        smooth = Smooth(base.to(device), dataset_spec["num_classes"], sigma, autocast_dtype=dtype)
        share = shards[certify.shard_index][rank::world]
        args = (certify.n0, certify.n, certify.alpha, certify.batch_size, log, certify.seed)
        certify_dataset(
            *(smooth, dataset, share, *args),
            radii=radii,
            stop_at_selection=certify.stop_at_selection,
            others=log_files(plan[name]["prefix"]),
            device=device,
            progress=distributed.is_main(),
        )
        model.cpu()
    distributed.barrier()
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
    """Join every model's logs into one table with a ``sigma`` column, sorted by sigma then idx,
    keeping only the selected images.

    Refuses, naming the shards, while the logs lack images of a shard (shards certified on other
    machines: copy their logs into the log folder and run the certify pipeline again).
    """
    tables = []
    for name, entry in certification_logs.items():
        count = len(entry["shards"])
        try:
            log = merge_shard_logs(log_files(entry["prefix"]), entry["shards"])
        except IncompleteCertificationError as e:
            raise IncompleteCertificationError(
                f"{name}: {e}; certify them with certify.shard_index=<shard> "
                f"certify.num_shards={count} (a rerun resumes), or copy their logs into "
                f"{Path(entry['prefix']).parent} from the machines that ran them, then run the "
                "certify pipeline again"
            ) from None
        table = pd.DataFrame(log)
        tables.append(table.assign(sigma=entry["sigma"])[["sigma", *table.columns]])
    results = pd.concat(tables, ignore_index=True)
    return results.sort_values(["sigma", "idx"], kind="stable").reset_index(drop=True)
