"""What the nodes of the training stages (pretrain, cifar_pretrain, finetune) share: where the
weights start, the run folder, and the engine's run with its epochs tracked in MLflow."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import torch
from torch.utils.data import Dataset

from dmae_pipeline import distributed
from dmae_pipeline.io import exclusive_lock, safe_torch_load
from dmae_pipeline.models import load_init, read_init, seeded
from dmae_pipeline.params import SCRATCH, StageParams
from dmae_pipeline.training import Stream, check_provenance, claim_run_dir, derive_seed, fit

M = TypeVar("M", bound=torch.nn.Module)


def initial_weights(
    params: StageParams,
    checkpoints: Mapping[str, Mapping[str, Any] | None],
    spec: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any], str]:
    """(state dict or None, its model config or {}, a name for logs) of ``params.init``: scratch,
    the checkpoint of a pipeline in ``checkpoints`` (None when it does not exist) or a file; one
    trained on other splits than ``spec``'s is refused (``check_provenance``)."""
    if params.init == SCRATCH:
        return None, {}, SCRATCH
    if params.init in params.INIT_FROM:
        checkpoint = checkpoints[params.init]
        if checkpoint is None:
            raise FileNotFoundError(
                f"{params.block}.init is {params.init}, but the {params.init} pipeline's "
                f"checkpoint does not exist: run `kedro run --pipelines={params.init}` first, or "
                f"set {params.block}.init to scratch or the path of a checkpoint file"
            )
        source = f"the {params.init} pipeline's checkpoint"
    else:
        checkpoint, source = safe_torch_load(params.init), params.init
    check_provenance(checkpoint, spec, f"{params.block}.init ({source})", "train from")
    state, config = read_init(checkpoint)
    return state, config or {}, source


def initial_model(
    build: Callable[..., M],
    config: Mapping[str, Any],
    params: StageParams,
    state: Mapping[str, torch.Tensor] | None,
    new_keys: tuple[str, ...] = (),
) -> M:
    """``build(**config)``, its random weights drawn from ``train.seed``, then ``state`` loaded
    over it; refused, naming ``<block>.init``, if the state lacks any weights but ``new_keys``."""
    model = seeded(build, derive_seed(params.train.seed, Stream.MODEL_INIT), **config)
    if state is not None:
        try:
            load_init(model, state, new_keys)
        except ValueError as e:
            raise ValueError(f"{params.block}.init ({params.init}): {e}") from e
    return model


def dataset_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The model arguments that the data decides: channels and normalization."""
    return {"in_chans": int(spec["channels"]), "mean": list(spec["mean"]), "std": list(spec["std"])}


def train(
    model: torch.nn.Module,
    train_set: Dataset,
    params: StageParams,
    run_dir: Path,
    fingerprint: Mapping[str, Any],
    *,
    loss_fn: Callable,
    name: str,
    **fit_args: Any,
) -> dict[str, Any]:
    """``training.fit`` in ``run_dir``, claimed for this run: locked against a second run and
    recording ``fingerprint`` (what the checkpoints depend on besides the engine's settings). Each
    epoch's metrics go to the active MLflow run as ``<name>/<metric>``."""
    lock = exclusive_lock(run_dir / ".run.lock", f"the training run {run_dir}")
    with lock if distributed.is_main() else nullcontext():
        if distributed.is_main():
            claim_run_dir(run_dir, fingerprint, params.train.resume)
        distributed.barrier()
        return fit(
            model,
            train_set,
            loss_fn=loss_fn,
            cfg=params.train,
            run_dir=run_dir,
            on_epoch=lambda record: log_epoch(record, f"{name}/"),
            log_prefix=f"{name}: ",
            **fit_args,
        )


def log_epoch(record: Mapping[str, Any], prefix: str) -> None:
    """One epoch's metrics, step = epoch, to the active MLflow run (if any)."""
    if mlflow.active_run() is not None:
        metrics = {f"{prefix}{k}": v for k, v in record.items() if k != "epoch"}
        mlflow.log_metrics(metrics, step=record["epoch"])
