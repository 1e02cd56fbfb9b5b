"""Nodes of the certify pipeline; the work is in ``dmae_pipeline.smoothing``.

The model of each sigma of ``finetune.sigmas`` certifies its share of the selected test images
into a log in ``certify.log_dir`` named after the sigma, the run's ``fingerprint`` (a rerun resumes
only logs of its own) and the shard and process (under torchrun); the merge reads every log of the
fingerprint, however the images were split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dmae_pipeline import distributed
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import UserError
from dmae_pipeline.models import finetuned_sigma, load_classifier
from dmae_pipeline.params import CertifyParams
from dmae_pipeline.reporting.names import sigma_label
from dmae_pipeline.smoothing import (
    CertifySettings,
    CompiledClassifier,
    IncompleteCertificationError,
    Smooth,
    certify_dataset,
    fingerprint,
    log_files,
    merge_shard_logs,
    shard_indices,
)
from dmae_pipeline.training import autocast_dtype, check_provenance, resolve_device


def certify_test_split(
    finetuned_models: Mapping[str, Callable[[], Any]],
    test_split: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    sigmas: list[float],
    radii: list[float],
    certify: CertifyParams,
) -> dict[str, dict[str, Any]]:
    """CERTIFY this shard of the selected test images with the model of every sigma in ``sigmas``
    (``finetune.sigmas``), this process's share of them under torchrun; every process waits for
    the others at the end. A model is refused if it was finetuned at another sigma, on other
    splits (its provenance) or for other pixel statistics than the dataset's; the public DMAE
    code's finetuned files are taken as they are (``load_classifier``). Sequential CERTIFY
    settles the certificates at ``radii`` (``report.radii``).

    Returns, per model, its sigma, the path prefix of its logs and the image indices of every
    shard, for ``merge_certification_logs``.
    """
    names = [sigma_label(sigma) for sigma in sigmas]
    missing = [name for name in names if name not in finetuned_models]
    if missing:
        raise FileNotFoundError(
            f"finetuned_models has no {', '.join(missing)} for finetune.sigmas {sigmas}: run the "
            "finetune pipeline first"
        )
    models, sigma_of = {}, dict(zip(names, sigmas, strict=True))
    for name in names:  # every model is checked before any work
        checkpoint, described = finetuned_models[name](), f"finetuned_models partition {name!r}"
        trained_at = finetuned_sigma(checkpoint, described)
        if trained_at != sigma_of[name]:
            raise UserError(
                f"{described} holds a model finetuned at sigma {trained_at:g}, not "
                f"{sigma_of[name]:g} (finetune.sigmas): name its file {sigma_label(trained_at)}.pt"
            )
        check_provenance(checkpoint, dataset_spec, described, "certify")
        models[name] = load_classifier(
            checkpoint,
            described,
            num_classes=dataset_spec["num_classes"],
            in_chans=dataset_spec["channels"],
            mean=dataset_spec["mean"],
            std=dataset_spec["std"],
        )
    try:
        Path(certify.log_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"certify.log_dir: cannot create {certify.log_dir} ({e.strerror}); name a folder "
            "this process can write"
        ) from None
    settings = CertifySettings(
        **certify.model_dump(
            include={"n0", "n", "alpha", "batch_size", "stop_at_selection", "seed"}
        ),
        radii=tuple(radii) if certify.mode == "sequential" else None,
    )
    dataset = SplitDataset(test_split, build_transform(dataset_spec, train=False))
    # on-disk splits: the file list, not the root, so that shards on other machines agree
    data = {"spec": dataset_spec, **{k: test_split.get(k) for k in ("images", "labels", "paths")}}
    shards = [
        shard_indices(len(dataset), certify.skip, certify.max_images, i, certify.num_shards)
        for i in range(certify.num_shards)
    ]
    rank, world = distributed.rank(), distributed.world_size()
    part = f"shard_{certify.shard_index}_of_{certify.num_shards}"
    part += f"-rank_{rank}_of_{world}" if world > 1 else ""
    device = resolve_device(certify.device)
    dtype = autocast_dtype(certify.amp, device)
    plan = {}
    for name, model in models.items():
        base = CompiledClassifier(model, settings.batch_lengths) if certify.compile else model
        smooth = Smooth(
            base.to(device), dataset_spec["num_classes"], sigma_of[name], autocast_dtype=dtype
        )
        classifier = {"config": model.config, "weights": model.state_dict()}
        named = f"{name}-{fingerprint(settings, smooth, classifier, data)}-"
        prefix = str(Path(certify.log_dir) / named)
        plan[name] = {"sigma": sigma_of[name], "prefix": prefix, "shards": shards}
        share, log = shards[certify.shard_index][rank::world], f"{prefix}{part}.tsv"
        certify_dataset(
            smooth,
            dataset,
            share,
            settings,
            log,
            others=log_files(prefix),
            progress=distributed.is_main(),
        )
        model.cpu()
    distributed.barrier()
    return plan


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
            log = merge_shard_logs(
                log_files(entry["prefix"]), entry["shards"], sigma=entry["sigma"]
            )
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
