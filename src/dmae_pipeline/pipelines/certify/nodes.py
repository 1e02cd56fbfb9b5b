"""Nodes of the certify pipeline; the work is in ``dmae_pipeline.smoothing``.

Each finetuned model certifies the selected test images (every ``skip``-th, at most
``max_images``), or one shard of them, appending one row per image to a tab-separated log in
``log_dir``. A log's name carries a fingerprint of everything its rows depend on (the model's
weights, the test data, sigma, n0, n, alpha, the seed, the device type and autocast), so a rerun
resumes only a log made with the same things, and a retrained model never reuses stale rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.models import build_classifier
from dmae_pipeline.smoothing import Smooth, certify_dataset, merge_logs, shard_indices
from dmae_pipeline.training import autocast_dtype, resolve_device
from dmae_pipeline.training.device import AMP_MODES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertifyConfig:
    """The ``certify`` parameters, checked. Build it with :meth:`from_params`."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    skip: int
    max_images: int | None
    shard_index: int
    num_shards: int
    seed: int
    log_dir: str
    device: str
    autocast: str

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "certify") -> CertifyConfig:
        """Check every parameter before any work; errors name ``<prefix>.<parameter>``."""
        if not isinstance(params, Mapping):
            raise ValueError(f"{prefix} must be a mapping of parameters, got {params!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        missing = [k for k in known if k not in params]
        if unknown or missing:
            raise ValueError(
                f"{prefix} has unknown parameters {unknown} and lacks {missing}; "
                f"expected exactly {known}"
            )

        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{prefix}.{key} must be {expected}, got {params[key]!r}")

        for key in ("n0", "n", "batch_size", "skip", "num_shards"):
            if not _is_int(params[key]) or params[key] < 1:
                raise bad(key, "a positive integer")
        for key in ("seed", "shard_index"):
            if not _is_int(params[key]) or params[key] < 0:
                raise bad(key, "a non-negative integer")
        if params["shard_index"] >= params["num_shards"]:
            raise bad("shard_index", f"below num_shards={params['num_shards']}")
        if params["max_images"] is not None and (
            not _is_int(params["max_images"]) or params["max_images"] < 1
        ):
            raise bad("max_images", "a positive integer, or null for every selected image")
        alpha = params["alpha"]
        if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0 < alpha < 1):
            raise bad("alpha", "a probability strictly between 0 and 1")
        if not isinstance(params["log_dir"], str) or not params["log_dir"]:
            raise bad("log_dir", "a folder path")
        device = params["device"]
        if not isinstance(device, str) or not (
            device in ("auto", "cpu", "cuda") or device.removeprefix("cuda:").isdigit()
        ):
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise bad("device", "'auto' or 'cpu' on a machine without CUDA")
        if params["autocast"] not in AMP_MODES:
            raise bad("autocast", f"one of {list(AMP_MODES)}")
        if params["autocast"] == "fp16" and resolve_device(device).type != "cuda":
            raise bad("autocast", "'bf16' or 'off' (or 'auto') without CUDA: fp16 needs a GPU")
        return cls(**{**params, "alpha": float(alpha)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_classifier(
    name: str, checkpoint: Any, spec: Mapping[str, Any]
) -> tuple[torch.nn.Module, float]:
    """The finetuned classifier of partition ``name`` and its sigma, or a ValueError naming it."""
    where = f"finetuned_models partition {name!r}"
    if not isinstance(checkpoint, Mapping) or not {"model", "config", "sigma"} <= set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise ValueError(f"{where} must hold 'model', 'config' and 'sigma', got {keys}")
    sigma = checkpoint["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"{where} has sigma {sigma!r}; expected a positive number")
    config = dict(checkpoint["config"])
    expected = {"num_classes": spec["num_classes"], "in_chans": spec["channels"]}
    for key, value in expected.items():
        if config.get(key) != value:
            raise ValueError(
                f"{where} is a classifier with {key}={config.get(key)!r}, but the test data "
                f"(dataset_spec {spec['name']!r}) has {value}"
            )
    model = build_classifier(**config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(f"{where}: its weights do not fit its config: {e}") from e
    return model.eval(), float(sigma)


def _fingerprint(
    checkpoint: Mapping[str, Any], test_split: Mapping[str, Any], settings: Mapping[str, Any]
) -> str:
    """A short hash of the model's config and weights, the test split and the settings."""
    digest = hashlib.blake2b(digest_size=6)

    def add(value: Any) -> None:
        if torch.is_tensor(value):
            value = value.detach().cpu().contiguous()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())

    add({**settings, "config": checkpoint["config"]})
    for key, tensor in sorted(checkpoint["model"].items()):
        add(key)
        add(tensor)
    # on-disk splits: the file list, not the root, so that shards on other machines agree
    for key in ("images", "paths", "labels"):
        if key in test_split:
            add(test_split[key])
    return digest.hexdigest()


def certify_test_split(
    finetuned_models: Mapping[str, Callable[[], Any]],
    test_split: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    certify: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """CERTIFY this shard of the selected test images with every finetuned model.

    Returns, per model, its sigma and the log and image indices of every shard, for
    ``merge_certification_logs``.
    """
    cfg = CertifyConfig.from_params(certify)
    if not finetuned_models:
        raise ValueError("finetuned_models holds no partitions: run the finetune pipeline first")
    dataset = SplitDataset(test_split, build_transform(dataset_spec, train=False))
    if len(dataset) == 0:
        raise ValueError("test_split holds no images")
    shards = [
        shard_indices(len(dataset), cfg.skip, cfg.max_images, shard, cfg.num_shards)
        for shard in range(cfg.num_shards)
    ]
    if not all(shards):
        selected = sum(map(len, shards))
        raise ValueError(
            f"certify.num_shards={cfg.num_shards} exceeds the {selected} selected test images"
        )
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(cfg.autocast, device)
    settings = {
        "n0": cfg.n0,
        "n": cfg.n,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "device": device.type,
        "autocast": str(dtype),
        "spec": dict(dataset_spec),
    }

    models, plan = {}, {}
    for name, load in sorted(finetuned_models.items()):  # every model checked before any work
        checkpoint = load()
        models[name], sigma = _load_classifier(name, checkpoint, dataset_spec)
        key = _fingerprint(checkpoint, test_split, {**settings, "sigma": sigma})
        logs = [
            Path(cfg.log_dir) / f"{name}-{key}-shard_{i}_of_{cfg.num_shards}.tsv"
            for i in range(cfg.num_shards)
        ]
        plan[name] = {
            "sigma": sigma,
            "shards": [
                {"log": str(log), "indices": indices}
                for log, indices in zip(logs, shards, strict=True)
            ],
        }
    sigmas = [entry["sigma"] for entry in plan.values()]
    if len(set(sigmas)) < len(sigmas):
        raise ValueError(f"finetuned_models has several models with the same sigma: {list(plan)}")

    for name, model in models.items():
        shard = plan[name]["shards"][cfg.shard_index]
        logger.info(
            "Certifying %s (sigma=%g) on %d test images (shard %d of %d) on %s, n0=%d, n=%d, "
            "alpha=%g; log %s",
            name,
            plan[name]["sigma"],
            len(shard["indices"]),
            cfg.shard_index,
            cfg.num_shards,
            device,
            cfg.n0,
            cfg.n,
            cfg.alpha,
            shard["log"],
        )
        smooth = Smooth(
            model.to(device), dataset_spec["num_classes"], plan[name]["sigma"], autocast_dtype=dtype
        )
        certify_dataset(
            smooth,
            dataset,
            shard["indices"],
            cfg.n0,
            cfg.n,
            cfg.alpha,
            cfg.batch_size,
            shard["log"],
            cfg.seed,
            device=device,
        )
        model.cpu()
    return plan


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
