"""The training engine shared by every training pipeline, and its losses (no Kedro imports)."""

from dmae_pipeline.training.checkpoint import load_best, load_checkpoint
from dmae_pipeline.training.config import RUNTIME_KEYS, TrainConfig
from dmae_pipeline.training.device import Amp, Device, autocast_dtype, resolve_device
from dmae_pipeline.training.engine import NonFiniteLossError, Stream, derive_seed, fit, split_batch
from dmae_pipeline.training.evaluate import accuracy_evaluator, noisy_accuracy
from dmae_pipeline.training.losses import LossFn, consistency_loss, noisy_classification_loss
from dmae_pipeline.training.optim import build_optimizer, param_groups
from dmae_pipeline.training.run_record import (
    DataMismatchError,
    check_provenance,
    check_run_dir,
    claim_run_dir,
    provenance,
)
from dmae_pipeline.training.schedule import lr_at, peak_lr

__all__ = [
    "RUNTIME_KEYS",
    "Amp",
    "DataMismatchError",
    "Device",
    "LossFn",
    "NonFiniteLossError",
    "Stream",
    "TrainConfig",
    "accuracy_evaluator",
    "autocast_dtype",
    "build_optimizer",
    "check_provenance",
    "check_run_dir",
    "claim_run_dir",
    "consistency_loss",
    "derive_seed",
    "fit",
    "load_best",
    "load_checkpoint",
    "lr_at",
    "noisy_accuracy",
    "noisy_classification_loss",
    "param_groups",
    "peak_lr",
    "provenance",
    "resolve_device",
    "split_batch",
]
