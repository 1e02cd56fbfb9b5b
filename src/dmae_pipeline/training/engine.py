"""The one training loop shared by pretraining, continued pretraining and finetuning.

Models, losses and data differ between those stages; the loop does not. ``fit`` owns the
optimizer, the lr schedule, accumulation, mixed precision, checkpoint/resume, model selection,
progress display and MLflow logging.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dmae_pipeline.training.checkpoint import (
    BEST,
    LAST,
    load_best,
    load_checkpoint,
    restore_checkpoint,
    save_best,
    save_checkpoint,
)
from dmae_pipeline.training.config import cfg_mismatch, validate_cfg
from dmae_pipeline.training.device import autocast_dtype, resolve_device, runtime
from dmae_pipeline.training.losses import LossFn
from dmae_pipeline.training.optim import build_optimizer
from dmae_pipeline.training.schedule import lr_at, peak_lr, set_lr

logger = logging.getLogger(__name__)

# Streams derived from cfg["seed"]; the data order gets one stream per epoch.
_NOISE, _TORCH, _NUMPY, _PYTHON, _DATA = range(5)
_ENGINE_KEYS = ("epoch", "train_loss", "lr", "images_per_s")


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or infinite; the run stopped before that step changed any weight."""


def derive_seed(seed: int, *stream: int) -> int:
    """An independent 32-bit seed for each stream of ``seed`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


def fit(
    model: torch.nn.Module,
    train_set: Dataset,
    *,
    loss_fn: LossFn,
    cfg: Mapping[str, Any],
    run_dir: str | Path,
    param_groups: list[dict] | None = None,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    select_metric: str | None = None,
    log_prefix: str = "",
) -> dict[str, Any]:
    """Train ``model`` in place on ``train_set`` and return ``{"history": [...], "best": {...}}``.

    ``loss_fn(model, batch, generator)`` gets the DataLoader's ``(images, labels)`` already on
    the device and a seeded generator on the device for noise and masking; it returns a scalar.
    ``evaluate(model)`` runs after every epoch (eval mode, no grad) and returns numeric metrics.
    With ``select_metric`` the epoch with the highest value of that metric is kept as
    ``run_dir/best.pt`` and loaded into the model at the end; "best" is that epoch's record
    (otherwise the last epoch's). ``run_dir/last.pt`` is written every ``checkpoint_every``
    epochs and at the end; with ``resume`` a run continues from it, bit-identically on the CPU.
    See ``dmae_pipeline.training.config`` for the cfg keys.
    """
    cfg = validate_cfg(cfg)
    if select_metric is not None and evaluate is None:
        raise ValueError(f"select_metric={select_metric!r} needs an evaluate function")
    samples_per_step = cfg["batch_size"] * cfg["accum_iter"]
    steps_per_epoch = len(train_set) // samples_per_step
    if steps_per_epoch == 0:
        raise ValueError(
            f"cfg['batch_size']: batch_size * accum_iter = {samples_per_step} exceeds the "
            f"{len(train_set)} training samples"
        )
    device = resolve_device(cfg["device"])
    amp_dtype = autocast_dtype(cfg["amp"], device)
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / LAST, run_dir / BEST
    stored = None
    if last_path.exists():
        if cfg["resume"]:
            stored = _load_resumable(last_path, cfg, len(train_set))
        else:
            logger.warning("resume is off: %s will be overwritten by a fresh run", last_path)

    with runtime(device, cfg["num_threads"]):
        model.to(device)
        optimizer = build_optimizer(
            model,
            weight_decay=cfg["weight_decay"],
            betas=cfg["betas"],
            param_groups=param_groups,
            fused=device.type == "cuda",
        )
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        noise_generator = torch.Generator(device=device)
        if stored is None:
            _seed_everything(cfg["seed"], noise_generator)
            done, step, history, best = 0, 0, [], None
        else:
            try:
                restore_checkpoint(
                    stored,
                    model=model,
                    optimizer=optimizer,
                    scaler=scaler,
                    noise_generator=noise_generator,
                )
            except (RuntimeError, ValueError, KeyError) as e:
                raise ValueError(
                    f"{last_path} does not fit this model/optimizer ({e}); "
                    "use a fresh run_dir or resume: false"
                ) from e
            done, step, history = stored["epoch"], stored["step"], stored["history"]
            best = _resumed_best(stored["best"], best_path, select_metric)
            if done == cfg["epochs"]:
                logger.info("%s%s: training already finished", log_prefix, last_path)
            else:
                logger.info("%sresuming from %s after epoch %d", log_prefix, last_path, done)
            for record in history:
                _log_mlflow(record, log_prefix)

        loader = DataLoader(
            train_set,
            batch_size=cfg["batch_size"],
            shuffle=True,
            drop_last=True,
            num_workers=cfg["num_workers"],
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),
        )
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        loop_start = time.perf_counter()
        for epoch in range(done + 1, cfg["epochs"] + 1):
            loader.generator.manual_seed(derive_seed(cfg["seed"], _DATA, epoch))
            stats, step = _train_epoch(
                model,
                loader,
                loss_fn,
                optimizer,
                scaler,
                noise_generator,
                autocast,
                cfg=cfg,
                epoch=epoch,
                step=step,
                steps_per_epoch=steps_per_epoch,
                log_prefix=log_prefix,
                last_path=last_path,
            )
            record = {"epoch": epoch, **stats}
            if evaluate is not None:
                record.update(_evaluate(model, evaluate, autocast, select_metric))
            history.append(record)
            if select_metric is not None and (
                best is None or record[select_metric] > best[select_metric]
            ):
                best = dict(record)
                save_best(best_path, model, best)
            per_epoch = (time.perf_counter() - loop_start) / (epoch - done)
            _log_epoch(record, cfg["epochs"], per_epoch * (cfg["epochs"] - epoch), log_prefix)
            _log_mlflow(record, log_prefix)
            if epoch % cfg["checkpoint_every"] == 0 or epoch == cfg["epochs"]:
                save_checkpoint(
                    last_path,
                    model=model,
                    optimizer=optimizer,
                    scaler=scaler,
                    noise_generator=noise_generator,
                    epoch=epoch,
                    step=step,
                    cfg=cfg,
                    train_size=len(train_set),
                    history=history,
                    best=best,
                )

        if select_metric is not None:
            model.load_state_dict(load_best(best_path)["model"])
    return {"history": history, "best": best if select_metric is not None else history[-1]}


def _train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    noise_generator: torch.Generator,
    autocast: torch.autocast,
    *,
    cfg: dict[str, Any],
    epoch: int,
    step: int,
    steps_per_epoch: int,
    log_prefix: str,
    last_path: Path,
) -> tuple[dict[str, float], int]:
    """One epoch of ``steps_per_epoch`` optimizer steps; returns its stats and the step count."""
    accum, epochs = cfg["accum_iter"], cfg["epochs"]
    base_lr = peak_lr(cfg["blr"], cfg["batch_size"], accum)
    micro_batches = steps_per_epoch * accum
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, images, start = 0.0, 0, time.perf_counter()
    bar = tqdm(
        islice(loader, micro_batches),
        total=micro_batches,
        desc=f"{log_prefix}epoch {epoch}/{epochs}",
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )
    with bar:
        for i, batch in enumerate(bar):
            if i % accum == 0:
                # MAE's per-iteration schedule, at the fractional epoch of this optimizer step
                lr = lr_at(
                    epoch - 1 + (i // accum) / steps_per_epoch,
                    lr=base_lr,
                    min_lr=cfg["min_lr"],
                    warmup_epochs=cfg["warmup_epochs"],
                    epochs=epochs,
                )
                set_lr(optimizer, lr)
            batch = _to_device(batch, noise_generator.device)
            with autocast:
                loss = loss_fn(model, batch, noise_generator)
            value = loss.item()
            if not math.isfinite(value):
                kept = f"{last_path} is left as it was" if last_path.exists() else "none yet"
                raise NonFiniteLossError(
                    f"{log_prefix}loss is {value} at epoch {epoch}, step {step + 1} "
                    f"(micro-batch {i + 1}/{micro_batches}); stopped before the update. "
                    f"Last good checkpoint: {kept}"
                )
            scaler.scale(loss / accum).backward()
            if (i + 1) % accum == 0:
                if cfg["clip_grad"] is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            loss_sum += value
            images += _batch_len(batch)
            rate = images / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}", refresh=False)
    stats = {
        "train_loss": loss_sum / micro_batches,
        "lr": lr,
        "images_per_s": images / (time.perf_counter() - start),
    }
    return stats, step


def _load_resumable(path: Path, cfg: dict[str, Any], train_size: int) -> dict[str, Any]:
    stored = load_checkpoint(path)
    if stored["train_size"] != train_size:
        raise ValueError(
            f"{path} was trained on {stored['train_size']} samples, this train_set has "
            f"{train_size}; use a fresh run_dir, or resume: false to start this run over"
        )
    changed = cfg_mismatch(stored["cfg"], cfg)
    if changed:
        details = ", ".join(f"{k}: {stored['cfg'].get(k)!r} -> {cfg.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written with other training settings ({details}); "
            "use a fresh run_dir, or resume: false to start this run over"
        )
    return stored


def _resumed_best(
    stored_best: dict[str, Any] | None, best_path: Path, select_metric: str | None
) -> dict[str, Any] | None:
    """best.pt is written together with its record, so it wins over the checkpoint's copy.

    It can be newer than last.pt when a run died between checkpoints.
    """
    if select_metric is None or not best_path.exists():
        return stored_best
    on_disk = load_best(best_path)["best"]
    return on_disk if select_metric in on_disk else stored_best


def _seed_everything(seed: int, noise_generator: torch.Generator) -> None:
    torch.manual_seed(derive_seed(seed, _TORCH))
    np.random.seed(derive_seed(seed, _NUMPY))
    random.seed(derive_seed(seed, _PYTHON))
    noise_generator.manual_seed(derive_seed(seed, _NOISE))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(item, device) for item in batch)
    return batch


def _batch_len(batch: Any) -> int:
    return len(batch if isinstance(batch, torch.Tensor) else batch[0])


def _evaluate(
    model: torch.nn.Module,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]],
    autocast: torch.autocast,
    select_metric: str | None,
) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad(), autocast:
            metrics = evaluate(model)
    finally:
        model.train()
    if not isinstance(metrics, Mapping):
        raise ValueError(f"evaluate: expected a dict of metrics, got {type(metrics).__name__}")
    clash = sorted(set(metrics) & set(_ENGINE_KEYS))
    if clash:
        raise ValueError(f"evaluate: metric names {clash} are reserved for the engine's own")
    if select_metric is not None and select_metric not in metrics:
        raise ValueError(
            f"select_metric={select_metric!r} is not among evaluate's metrics {sorted(metrics)}"
        )
    try:
        return {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"evaluate: expected numeric metric values, got {dict(metrics)}") from e


def _log_epoch(record: dict[str, Any], epochs: int, eta_s: float, log_prefix: str) -> None:
    extra = "".join(f"  {k} {v:.4g}" for k, v in record.items() if k not in _ENGINE_KEYS)
    logger.info(
        "%sepoch %d/%d  train_loss %.4f  lr %.3g  %.1f img/s%s  ETA %s",
        log_prefix,
        record["epoch"],
        epochs,
        record["train_loss"],
        record["lr"],
        record["images_per_s"],
        extra,
        tqdm.format_interval(eta_s),
    )


def _log_mlflow(record: dict[str, Any], log_prefix: str) -> None:
    """Per-epoch metrics to the active MLflow run, if there is one (step = epoch).

    A run can only be active once mlflow has been imported, so mlflow is not imported here.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    metrics = {f"{log_prefix}{k}": v for k, v in record.items() if k != "epoch"}
    mlflow.log_metrics(metrics, step=record["epoch"])
