"""Nodes of the finetune pipeline: one noise-augmented ViT classifier per sigma.

The work is in ``dmae_pipeline.models`` (classifier, checkpoint import, layer-decay groups) and
``dmae_pipeline.training`` (the engine, the noise + consistency loss, accuracy under noise); here
the parameters are checked, the initialization is chosen and one training run per sigma is wired.

A partition of ``finetuned_models`` keeps the weights under 'model' and the epoch under 'epoch',
as the released finetuned files do, so loaders of that format read it. The exact released file
({'model', 'epoch', 'args'}) is one call away::

    model = build_classifier(**p["config"])
    model.load_state_dict(p["model"])
    export_finetuned(model, "dmae_vit_sigma_0.25.pth", epoch=p["epoch"], args={"sigma": 0.25})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load
from dmae_pipeline.models import (
    ViTClassifier,
    build_classifier,
    encoder_config,
    load_pretrained,
    param_groups_lrd,
)
from dmae_pipeline.training import (
    accuracy_evaluator,
    check_run_dir,
    claim_run_dir,
    fit,
    noisy_classification_loss,
    state_digest,
    validate_cfg,
)
from dmae_pipeline.training.config import RUNTIME_KEYS

logger = logging.getLogger(__name__)

INIT_PIPELINES = ("cifar_pretrain", "pretrain")  # init sources read from the catalog
SCRATCH = "scratch"
NEW_KEYS = ("head.", "fc_norm.")  # the only classifier weights a DMAE/MAE checkpoint lacks
KEYS = {
    "top": {
        "sigmas", "num_classes", "init", "model", "consistency", "layer_decay",
        "label_smoothing", "mixup", "cutmix", "augment", "eval", "run_dir", "train",
    },
    "init": {"from"},
    "consistency": {"enabled", "m", "lam", "eta"},
    "eval": {"batch_size", "seed"},
}  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"finetune.{name}: expected {expected}, got {value!r}")


def _section(params: Mapping[str, Any], name: str, section: str) -> dict[str, Any]:
    _require(isinstance(params, Mapping), name or "finetune", "a mapping", params)
    unknown = sorted(set(params) - KEYS[section])
    missing = sorted(KEYS[section] - set(params))
    where = f"finetune.{name}" if name else "finetune"
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(KEYS[section])}")
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    return dict(params)


def _check_params(params: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The finetune parameters, checked and normalized; ValueError naming the bad parameter."""
    p = _section(params, "", "top")
    sigmas = p["sigmas"]
    _require(
        isinstance(sigmas, list) and bool(sigmas) and all(_is_number(s) and s > 0 for s in sigmas),
        "sigmas",
        "a non-empty list of noise levels > 0",
        sigmas,
    )
    sigmas = [float(s) for s in sigmas]
    _require(len(set(sigmas)) == len(sigmas), "sigmas", "distinct noise levels", sigmas)
    num_classes = p["num_classes"]
    _require(
        num_classes is None or num_classes == spec["num_classes"],
        "num_classes",
        f"null or the dataset's {spec['num_classes']} classes",
        num_classes,
    )
    init = _section(p["init"], "init", "init")["from"]
    _require(isinstance(init, str) and bool(init), "init.from", "a name or a path", init)
    _require(isinstance(p["model"], Mapping), "model", "a mapping of settings", p["model"])
    for key in ("in_chans", "num_classes", "mean", "std"):
        if key in p["model"]:
            raise ValueError(f"finetune.model.{key}: set by the dataset spec; remove it")

    c = _section(p["consistency"], "consistency", "consistency")
    _require(isinstance(c["enabled"], bool), "consistency.enabled", "true or false", c["enabled"])
    m = c["m"]
    _require(isinstance(m, int) and not isinstance(m, bool) and m >= 1, "consistency.m",
             "an integer >= 1 (noisy copies per image)", m)  # fmt: skip
    _require(_is_number(c["lam"]) and c["lam"] >= 0, "consistency.lam", "a number >= 0", c["lam"])
    eta = c["eta"] if isinstance(c["eta"], list) else [c["eta"]] * len(sigmas)
    _require(
        len(eta) == len(sigmas) and all(_is_number(e) and e >= 0 for e in eta),
        "consistency.eta",
        f"a number >= 0 or one per sigma ({len(sigmas)})",
        c["eta"],
    )
    for key, expected, ok in (
        ("label_smoothing", "a number in [0, 1)", lambda v: 0 <= v < 1),
        ("mixup", "a mixup alpha >= 0 (0: off)", lambda v: v >= 0),
        ("cutmix", "a cutmix alpha >= 0 (0: off)", lambda v: v >= 0),
        ("layer_decay", "a number in (0, 1] (1: no layer-wise decay)", lambda v: 0 < v <= 1),
    ):
        _require(_is_number(p[key]) and ok(p[key]), key, expected, p[key])
    train = validate_cfg(p["train"])
    _require(
        (p["mixup"] == 0 and p["cutmix"] == 0) or train["batch_size"] % 2 == 0,
        "train.batch_size",
        "an even number with mixup or cutmix",
        train["batch_size"],
    )
    ev = _section(p["eval"], "eval", "eval")
    _require(isinstance(p["run_dir"], str) and bool(p["run_dir"]), "run_dir", "a folder",
             p["run_dir"])  # fmt: skip
    return {
        **p,
        "sigmas": sigmas,
        "num_classes": spec["num_classes"],
        "init": init,
        "model": dict(p["model"]),
        "loss": [
            {
                "sigma": sigma,
                "m": m if c["enabled"] else 1,
                "lam": float(c["lam"]) if c["enabled"] else 0.0,
                "eta": float(e) if c["enabled"] else 0.0,
                "label_smoothing": float(p["label_smoothing"]),
                "mixup": float(p["mixup"]),
                "cutmix": float(p["cutmix"]),
            }
            for sigma, e in zip(sigmas, eta, strict=True)
        ],
        "eval": ev,
        "run_dir": Path(p["run_dir"]),
        "train": train,
    }


def _init_source(
    init: str, checkpoints: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(weights or a checkpoint holding them under 'model', its model config or None)."""
    if init == SCRATCH:
        return None, None
    if init in checkpoints:
        checkpoint = checkpoints[init]
        if checkpoint is None:
            raise FileNotFoundError(
                f"finetune.init.from={init}: the {init} pipeline's checkpoint does not exist; "
                f"run `kedro run --pipelines={init}` first, or choose another finetune.init.from "
                f"({', '.join(INIT_PIPELINES)}, {SCRATCH} or the path of a DMAE/MAE checkpoint)"
            )
        if not isinstance(checkpoint, Mapping) or not {"model", "config"} <= set(checkpoint):
            raise ValueError(
                f"finetune.init.from={init}: the {init} checkpoint is not a pipeline checkpoint "
                "{'model': state_dict, 'config': model config, 'epoch': int}"
            )
        return checkpoint, checkpoint["config"]
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(
            f"finetune.init.from: {path} does not exist; expected {', '.join(INIT_PIPELINES)}, "
            f"{SCRATCH} or the path of a DMAE/MAE checkpoint file"
        )
    checkpoint = safe_torch_load(path)
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    return checkpoint, config if isinstance(config, Mapping) else None


def _classifier_config(
    init_config: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    spec: Mapping[str, Any],
    init: str,
) -> dict[str, Any]:
    """build_classifier arguments: the init checkpoint's encoder, then finetune.model, then the
    dataset's classes, channels and mean/std."""
    if init_config is None and "preset" not in overrides:
        raise ValueError(
            f"finetune.model.preset: needed with finetune.init.from={init}, which brings no model "
            "config; give preset (tiny, small, base, large) and any of img_size, patch_size, ..."
        )
    base = {}
    if init_config is not None:
        try:
            base = encoder_config(init_config)
        except KeyError as e:
            raise ValueError(f"finetune.init.from={init}: its model config lacks {e}") from e
        if base["in_chans"] != spec["channels"]:
            raise ValueError(
                f"finetune.init.from={init}: the checkpoint takes {base['in_chans']}-channel "
                f"images but the dataset has {spec['channels']} channels"
            )
    return {
        **base,
        **overrides,
        "num_classes": spec["num_classes"],
        "in_chans": spec["channels"],
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
    }


def _new_classifier(
    config: Mapping[str, Any], weights: Mapping[str, Any] | None, init: str, seed: int
) -> ViTClassifier:
    """The classifier with the init weights; the new head is drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(**config)
    if weights is not None:
        missing, _ = load_pretrained(model, weights)
        lacking = [k for k in missing if not k.startswith(NEW_KEYS)]
        if lacking:
            raise ValueError(
                f"finetune.init.from={init}: the checkpoint lacks encoder weights "
                f"{lacking[:6]}{' ...' if len(lacking) > 6 else ''}"
            )
    return model


def _plan_runs(
    s: dict[str, Any], weights: Mapping[str, Any] | None, config: dict[str, Any], val_set: Any
) -> list[dict[str, Any]]:
    """Per sigma: its loss, validation metric, run folder and settings record, all checked."""
    common = {
        "init": s["init"],
        "init_sha256": None if weights is None else state_digest(weights),
        "classifier": config,
        "layer_decay": s["layer_decay"],
        "augment": s["augment"],
        "eval": s["eval"],
        "train": {k: v for k, v in s["train"].items() if k not in RUNTIME_KEYS},
    }
    runs = []
    for loss in s["loss"]:
        name = f"sigma_{loss['sigma']}"
        run = {
            "name": name,
            "sigma": loss["sigma"],
            "loss_fn": noisy_classification_loss(num_classes=s["num_classes"], **loss),
            "evaluate": accuracy_evaluator(
                val_set,
                sigma=loss["sigma"],
                batch_size=s["eval"]["batch_size"],
                seed=s["eval"]["seed"],
                num_workers=s["train"]["num_workers"],
                prefix="val_",
            ),
            "run_dir": s["run_dir"] / f"run_{name}",
            "settings": {**common, "loss": loss},
        }
        check_run_dir(run["run_dir"], run["settings"], s["train"]["resume"], "finetune")
        runs.append(run)
    stale = {p.stem for p in s["run_dir"].glob("sigma_*.pt")} - {run["name"] for run in runs}
    if stale:
        logger.warning("%s also holds %s from earlier runs", s["run_dir"], sorted(stale))
    return runs


def finetune_classifiers(
    dataset_spec: dict[str, Any],
    train_split: dict[str, Any],
    val_split: dict[str, Any],
    pretrained_model: dict[str, Any] | None,
    cifar_pretrained_model: dict[str, Any] | None,
    params: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Finetune one classifier per sigma; keep each at its best noisy validation accuracy.

    Returns the partitions ``sigma_<sigma>`` -> {"model", "config", "sigma", "epoch", "val",
    "init"} and the validation table (sigma, epoch, clean_acc, noisy_acc of the kept epochs).
    Everything is checked before the first run starts. The test split is not an input.
    """
    s = _check_params(params, dataset_spec)
    checkpoints = {"pretrain": pretrained_model, "cifar_pretrain": cifar_pretrained_model}
    weights, init_config = _init_source(s["init"], checkpoints)
    config = _classifier_config(init_config, s["model"], dataset_spec, s["init"])
    _new_classifier(config, weights, s["init"], s["train"]["seed"])  # refuse misfits now
    train_set = SplitDataset(train_split, build_transform(dataset_spec, True, s["augment"]))
    val_set = SplitDataset(val_split, build_transform(dataset_spec, False))
    runs = _plan_runs(s, weights, config, val_set)

    partitions, rows = {}, []
    for run in runs:
        model = _new_classifier(config, weights, s["init"], s["train"]["seed"])
        claim_run_dir(run["run_dir"], run["settings"], s["train"]["resume"], "finetune")
        best = fit(
            model,
            train_set,
            loss_fn=run["loss_fn"],
            cfg=s["train"],
            run_dir=run["run_dir"],
            param_groups=param_groups_lrd(model, s["train"]["weight_decay"], s["layer_decay"]),
            evaluate=run["evaluate"],
            select_metric="val_noisy_acc",
            log_prefix=f"finetune/{run['name']}/",
        )["best"]
        val = {"clean_acc": best["val_clean_acc"], "noisy_acc": best["val_noisy_acc"]}
        logger.info(
            "finetune %s: kept epoch %d, validation accuracy %.4f clean, %.4f under noise",
            run["name"],
            best["epoch"],
            val["clean_acc"],
            val["noisy_acc"],
        )
        partitions[run["name"]] = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": model.config,
            "sigma": run["sigma"],
            "epoch": int(best["epoch"]),
            "val": val,
            "init": s["init"],
        }
        rows.append({"sigma": run["sigma"], "epoch": int(best["epoch"]), **val})
    return partitions, pd.DataFrame(rows, columns=["sigma", "epoch", "clean_acc", "noisy_acc"])
