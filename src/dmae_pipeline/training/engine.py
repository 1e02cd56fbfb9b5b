"""The one training loop shared by pretraining, continued pretraining and finetuning: ``fit`` owns
the optimizer, the lr schedule, accumulation, mixed precision, data parallelism, checkpoint/resume,
model selection and progress. How it splits batches, seeds its streams and stops on a non-finite
loss: docs/training.md.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from enum import IntEnum
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from dmae_pipeline import distributed
from dmae_pipeline.training.checkpoint import (
    BEST,
    LAST,
    load_best,
    load_checkpoint,
    restore_checkpoint,
    save_best,
    save_checkpoint,
)
from dmae_pipeline.training.config import TrainConfig
from dmae_pipeline.training.device import autocast_dtype, resolve_device, runtime
from dmae_pipeline.training.losses import LossFn
from dmae_pipeline.training.optim import build_optimizer
from dmae_pipeline.training.schedule import lr_at, peak_lr, set_lr

logger = logging.getLogger(__name__)

_ENGINE_KEYS = ("epoch", "train_loss", "lr", "images_per_s")
# Micro-batches between two reads of the device's loss and non-finite flag.
SYNC_EVERY = 50
_NO_BAD_STEP = 2**62


class Stream(IntEnum):
    """The independent random streams of a run's seed: ``derive_seed(seed, stream, ...)``. The
    engine's own are drawn per rank and epoch (the data order's per epoch only)."""

    NOISE = 0
    TORCH = 1
    NUMPY = 2
    PYTHON = 3
    DATA = 4
    WORKERS = 5
    MODEL_INIT = 100  # a model's random initial weights
    FIGURE = 101  # the noise and masks of the reconstruction figure


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or infinite; no weight changed from that step on."""


def derive_seed(seed: int, *stream: int) -> int:
    """An independent 32-bit seed for each stream of ``seed`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


def split_batch(batch_size: int, accum_iter: int, world_size: int) -> tuple[int, int]:
    """How ``world_size`` processes share the effective batch ``batch_size * accum_iter``:
    (micro-batch size, micro-batches per optimizer step), both per process.

    Each process takes ``batch_size * accum_iter / world_size`` samples per step, in the fewest
    equal micro-batches of at most ``batch_size`` samples. When ``world_size`` divides
    ``accum_iter`` that is (batch_size, accum_iter / world_size): the configured micro-batch,
    fewer of them; otherwise the micro-batch is split. A ValueError when the effective batch is
    not a multiple of ``world_size``.
    """
    effective = batch_size * accum_iter
    if effective % world_size:
        raise ValueError(
            f"batch_size * accum_iter = {batch_size} * {accum_iter} = {effective} samples per "
            f"optimizer step cannot be split evenly over {world_size} processes: choose "
            f"batch_size and accum_iter whose product is a multiple of {world_size}"
        )
    share = effective // world_size
    count = next(c for c in range(-(-share // batch_size), share + 1) if share % c == 0)
    return share // count, count


def fit(
    model: torch.nn.Module,
    train_set: Dataset,
    *,
    loss_fn: LossFn,
    cfg: TrainConfig,
    run_dir: str | Path,
    param_groups: list[dict] | None = None,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    select_metric: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log_prefix: str = "",
) -> dict[str, Any]:
    """Train ``model`` in place on ``train_set`` and return ``{"history": [...], "best": {...}}``.

    ``loss_fn(model, batch, generator)`` gets the model to train (wrapped for data parallelism
    or compilation: call it, do not reach into it), the DataLoader's ``(images, labels)`` already
    on the device and a seeded generator on the device for noise and masking; it returns a
    scalar. ``param_groups`` are AdamW's (default: :func:`~dmae_pipeline.training.param_groups`).
    ``evaluate(model)`` runs after every epoch on rank 0 (eval mode, no grad) and returns numeric
    metrics. With ``select_metric`` the epoch with the highest value of that metric is kept as
    ``run_dir/best.pt`` and loaded into the model at the end; "best" is that epoch's record
    (otherwise the last epoch's). ``on_epoch(record)`` is called on rank 0 with each epoch's
    record ({"epoch", "train_loss", "lr", "images_per_s", **metrics}), also with the records of
    a resumed run's earlier epochs. ``run_dir/last.pt`` is written every ``cfg.checkpoint_every``
    epochs and at the end; with ``cfg.resume`` a run continues from it, bit-identically on the
    CPU with ``num_workers`` = 0. ``log_prefix`` starts every log line and progress bar.
    """
    distributed.init_from_env()
    micro_batch, accum = split_batch(cfg.batch_size, cfg.accum_iter, distributed.world_size())
    if select_metric is not None and evaluate is None:
        raise ValueError(f"select_metric={select_metric!r} needs an evaluate function")
    steps_per_epoch = len(train_set) // cfg.effective_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"the effective batch batch_size * accum_iter = {cfg.effective_batch} exceeds the "
            f"{len(train_set)} training samples"
        )
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.amp, device)
    main = distributed.is_main()
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / LAST, run_dir / BEST
    stored = None
    if last_path.exists():
        if cfg.resume:
            stored = _load_resumable(last_path, cfg, len(train_set))
        elif main:
            logger.warning("resume is off: %s will be overwritten by a fresh run", last_path)

    with runtime(device, cfg.num_threads):
        model.to(device)
        optimizer = build_optimizer(
            model, weight_decay=cfg.weight_decay, betas=cfg.betas, groups=param_groups
        )
        scaler = _grad_scaler(device, amp_dtype)
        if stored is None:
            done, step, history, best = 0, 0, [], None
        else:
            try:
                restore_checkpoint(stored, model=model, optimizer=optimizer, scaler=scaler)
            except (RuntimeError, ValueError, KeyError) as e:
                raise ValueError(
                    f"{last_path} does not fit this model/optimizer ({e}); "
                    "use a fresh run folder or turn resume off"
                ) from e
            done, step, history = stored["epoch"], stored["step"], stored["history"]
            best = _resumed_best(stored["best"], best_path, select_metric)
            if main:
                if done == cfg.epochs:
                    logger.info("%s%s: training already finished", log_prefix, last_path)
                else:
                    logger.info("%sresuming from %s after epoch %d", log_prefix, last_path, done)
        if main and on_epoch is not None:
            for record in history:
                on_epoch(record)

        trainer = _Trainer(
            model, train_set, loss_fn, optimizer, scaler, cfg,
            device=device, amp_dtype=amp_dtype, micro_batch=micro_batch, accum=accum,
            steps_per_epoch=steps_per_epoch, log_prefix=log_prefix, last_path=last_path,
        )  # fmt: skip
        loop_start = time.perf_counter()
        for epoch in range(done + 1, cfg.epochs + 1):
            stats, step = trainer.train_epoch(epoch, step)
            record = {"epoch": epoch, **stats}
            if main and evaluate is not None:
                record.update(_evaluate(model, evaluate, trainer.autocast, select_metric))
            record = distributed.broadcast_object(record)
            history.append(record)
            if select_metric is not None and (
                best is None or record[select_metric] > best[select_metric]
            ):
                best = dict(record)
                if main:
                    save_best(best_path, model, best)
            if main:
                per_epoch = (time.perf_counter() - loop_start) / (epoch - done)
                _log_epoch(record, cfg.epochs, per_epoch * (cfg.epochs - epoch), log_prefix)
                if on_epoch is not None:
                    on_epoch(record)
                if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                    save_checkpoint(
                        last_path, model=model, optimizer=optimizer, scaler=scaler, epoch=epoch,
                        step=step, cfg=cfg.model_dump(), train_size=len(train_set), history=history,
                        best=best,
                    )  # fmt: skip

        distributed.barrier()
        if select_metric is not None:
            model.load_state_dict(load_best(best_path)["model"])
    return {"history": history, "best": best if select_metric is not None else history[-1]}


class _Trainer:
    """The model, optimizer and data of one run, and its epoch of training."""

    def __init__(
        self,
        model: torch.nn.Module,
        train_set: Dataset,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        cfg: TrainConfig,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        micro_batch: int,
        accum: int,
        steps_per_epoch: int,
        log_prefix: str,
        last_path: Path,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scaler, self.cfg = (
            model, loss_fn, optimizer, scaler, cfg
        )  # fmt: skip
        self.device, self.accum, self.steps_per_epoch = device, accum, steps_per_epoch
        self.log_prefix, self.last_path = log_prefix, last_path
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        self.noise = torch.Generator(device=device)
        self.first_bad_step = torch.full((), _NO_BAD_STEP, device=device)
        self.sampler = DistributedSampler(
            train_set,
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=derive_seed(cfg.seed, Stream.DATA),
            drop_last=True,
        )
        self.loader = DataLoader(
            train_set,
            batch_size=micro_batch,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            generator=torch.Generator(),
        )
        self.ddp = None
        if self.world > 1:
            self.ddp = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False,
                gradient_as_bucket_view=True,
            )
        self.eager = self.ddp or model
        self.train_model = torch.compile(self.eager) if cfg.compile else self.eager
        self.first_compiled_call = cfg.compile

    def seed_epoch(self, epoch: int) -> None:
        seed, rank = self.cfg.seed, self.rank
        torch.manual_seed(derive_seed(seed, Stream.TORCH, rank, epoch))
        np.random.seed(derive_seed(seed, Stream.NUMPY, rank, epoch))
        random.seed(derive_seed(seed, Stream.PYTHON, rank, epoch))
        self.noise.manual_seed(derive_seed(seed, Stream.NOISE, rank, epoch))
        self.loader.generator.manual_seed(derive_seed(seed, Stream.WORKERS, rank, epoch))
        self.sampler.set_epoch(epoch)

    def train_epoch(self, epoch: int, step: int) -> tuple[dict[str, float], int]:
        """One epoch of ``steps_per_epoch`` optimizer steps; its stats and the step count."""
        cfg, accum = self.cfg, self.accum
        base_lr = peak_lr(cfg.blr, cfg.batch_size, cfg.accum_iter)
        micro_batches = self.steps_per_epoch * accum
        self.seed_epoch(epoch)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        images, start = 0, time.perf_counter()
        bar = tqdm(
            total=micro_batches,
            desc=f"{self.log_prefix}epoch {epoch}/{cfg.epochs}",
            disable=None if distributed.is_main() else True,
            leave=False,
            dynamic_ncols=True,
        )
        with bar:
            for i, batch in enumerate(islice(self.loader, micro_batches)):
                if i % accum == 0:
                    # MAE's per-iteration schedule, at the fractional epoch of this step
                    lr = lr_at(
                        epoch - 1 + (i // accum) / self.steps_per_epoch,
                        lr=base_lr,
                        min_lr=cfg.min_lr,
                        warmup_epochs=cfg.warmup_epochs,
                        epochs=cfg.epochs,
                    )
                    set_lr(self.optimizer, lr)
                batch = _to_device(batch, self.device)
                last_of_step = (i + 1) % accum == 0
                loss_sum += self.forward_backward(batch, step + 1, sync=last_of_step)
                if last_of_step:
                    self.optimizer_step()
                    step += 1
                images += _batch_len(batch)
                if (i + 1) % SYNC_EVERY == 0 or i + 1 == micro_batches:
                    self.check_finite(epoch)
                    bar.update(i + 1 - bar.n)
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / (i + 1):.4f}",
                        img_s=f"{self.world * images / (time.perf_counter() - start):.1f}",
                    )
        distributed.all_reduce(loss_sum)
        stats = {
            "train_loss": loss_sum.item() / (micro_batches * self.world),
            "lr": lr,
            "images_per_s": self.world * images / (time.perf_counter() - start),
        }
        return stats, step

    def forward_backward(self, batch: Any, step: int, *, sync: bool) -> torch.Tensor:
        """The micro-batch's loss (detached); its gradient is accumulated, and all-reduced over
        the processes only when ``sync``. The first call of a compiled model falls back to the
        eager one, with a warning, where compilation fails."""
        if not self.first_compiled_call:
            return self._forward_backward(batch, step, sync)
        self.first_compiled_call = False
        rng = _rng_state(self.noise)
        try:
            return self._forward_backward(batch, step, sync)
        except Exception as e:  # whatever the compiler raises
            logger.warning(
                "%storch.compile failed (%s: %s); training without compilation",
                self.log_prefix, type(e).__name__, e,
            )  # fmt: skip
            self.train_model = self.eager
            self.optimizer.zero_grad(set_to_none=True)
            _set_rng_state(rng, self.noise)
            return self._forward_backward(batch, step, sync)

    def _forward_backward(self, batch: Any, step: int, sync: bool) -> torch.Tensor:
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        with no_sync:
            with self.autocast:
                loss = self.loss_fn(self.train_model, batch, self.noise)
            bad = torch.where(torch.isfinite(loss.detach()), _NO_BAD_STEP, step)
            self.first_bad_step = torch.minimum(self.first_bad_step, bad)
            poison = torch.where(self.first_bad_step == _NO_BAD_STEP, 1.0, float("nan"))
            self.scaler.scale(loss * poison / self.accum).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self, epoch: int) -> None:
        """Raise, on every rank, if any rank saw a non-finite loss (a host sync)."""
        bad_step = int(distributed.all_reduce(self.first_bad_step.clone(), "min"))
        if bad_step != _NO_BAD_STEP:
            kept = f"{self.last_path} is left as it was" if self.last_path.exists() else "none yet"
            raise NonFiniteLossError(
                f"{self.log_prefix}the loss is NaN or infinite at epoch {epoch}, step "
                f"{bad_step}; no weight changed from that step on. Last good checkpoint: {kept}"
            )


def _grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16. In every mode the scaler's on-device check of the gradients is what
    makes the fused AdamW skip a step after a non-finite loss; without fp16 the scale starts at 1
    and never grows (a skipped step halves it, which is exact)."""
    if amp_dtype == torch.float16:
        return torch.amp.GradScaler(device.type)
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2**31 - 1)


def _rng_state(noise: torch.Generator) -> tuple[torch.Tensor, ...]:
    states = (torch.get_rng_state(), noise.get_state())
    if noise.device.type == "cuda":
        states += (torch.cuda.get_rng_state(noise.device),)
    return states


def _set_rng_state(states: tuple[torch.Tensor, ...], noise: torch.Generator) -> None:
    torch.set_rng_state(states[0])
    noise.set_state(states[1])
    if noise.device.type == "cuda":
        torch.cuda.set_rng_state(states[2], noise.device)


def _load_resumable(path: Path, cfg: TrainConfig, train_size: int) -> dict[str, Any]:
    stored = load_checkpoint(path)
    if stored["train_size"] != train_size:
        raise ValueError(
            f"{path} was trained on {stored['train_size']} samples, this train_set has "
            f"{train_size}; use a fresh run folder or turn resume off to start over"
        )
    changed = cfg.changed_since(stored["cfg"])
    if changed:
        current = cfg.model_dump()
        details = ", ".join(f"{k}: {stored['cfg'].get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written with other training settings ({details}); "
            "use a fresh run folder or turn resume off to start over"
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
