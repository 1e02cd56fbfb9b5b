"""The training engine's cfg, validated before any work starts.

Required: epochs (>= 1), warmup_epochs (>= 0, <= epochs), blr (> 0; lr = blr * batch_size *
accum_iter / 256), min_lr (>= 0, <= lr), batch_size (per micro-batch, >= 1), weight_decay
(>= 0), betas (two numbers in [0, 1)), seed (>= 0), checkpoint_every (epochs, >= 1).
Optional: accum_iter (1), clip_grad (None = off, else the max grad norm), resume (True),
num_workers (0), num_threads (None = leave torch's setting), device ("auto" | "cpu" | "cuda"),
amp ("auto" = bf16 on CUDA and off on the CPU | "bf16" | "fp16" (CUDA, with a GradScaler) | "off").
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

from dmae_pipeline.training.device import AMP_MODES
from dmae_pipeline.training.schedule import peak_lr

REQUIRED_KEYS = (
    "epochs",
    "warmup_epochs",
    "blr",
    "min_lr",
    "batch_size",
    "weight_decay",
    "betas",
    "seed",
    "checkpoint_every",
)
DEFAULTS: dict[str, Any] = {
    "accum_iter": 1,
    "clip_grad": None,
    "resume": True,
    "num_workers": 0,
    "num_threads": None,
    "device": "auto",
    "amp": "auto",
}
# Keys that may change between a run and its resumption without changing what is computed.
RUNTIME_KEYS = frozenset({"resume", "checkpoint_every", "num_workers", "num_threads", "device"})


def _int(cfg: Mapping, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"cfg['{key}']: expected an integer >= {minimum}, got {value!r}")
    return value


def _real(cfg: Mapping, key: str, minimum: float, *, strict: bool = False) -> float:
    value = cfg[key]
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if not ok or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"cfg['{key}']: expected a number {relation} {minimum}, got {value!r}")
    return float(value)


def validate_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The cfg with defaults filled in and numbers normalized; ValueError naming the bad key."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"cfg: expected a mapping of training settings, got {type(cfg).__name__}")
    known = set(REQUIRED_KEYS) | set(DEFAULTS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"cfg: unknown keys {unknown}; expected keys among {sorted(known)}")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"cfg: missing required keys {missing}")
    cfg = {**DEFAULTS, **cfg}
    out: dict[str, Any] = {
        "epochs": _int(cfg, "epochs", 1),
        "warmup_epochs": _real(cfg, "warmup_epochs", 0.0),
        "blr": _real(cfg, "blr", 0.0, strict=True),
        "min_lr": _real(cfg, "min_lr", 0.0),
        "batch_size": _int(cfg, "batch_size", 1),
        "accum_iter": _int(cfg, "accum_iter", 1),
        "weight_decay": _real(cfg, "weight_decay", 0.0),
        "seed": _int(cfg, "seed", 0),
        "checkpoint_every": _int(cfg, "checkpoint_every", 1),
        "num_workers": _int(cfg, "num_workers", 0),
    }
    if out["warmup_epochs"] > out["epochs"]:
        raise ValueError(
            f"cfg['warmup_epochs']: expected at most epochs ({out['epochs']}), "
            f"got {out['warmup_epochs']}"
        )
    lr = peak_lr(out["blr"], out["batch_size"], out["accum_iter"])
    if out["min_lr"] > lr:
        raise ValueError(
            f"cfg['min_lr']: expected at most the peak lr blr * batch_size * accum_iter / 256 "
            f"= {lr:.3g}, got {out['min_lr']}"
        )
    betas = cfg["betas"]
    if (
        isinstance(betas, str | bytes)
        or not hasattr(betas, "__len__")
        or len(betas) != 2
        or not all(isinstance(b, Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"cfg['betas']: expected two numbers in [0, 1), got {betas!r}")
    out["betas"] = [float(b) for b in betas]
    out["clip_grad"] = (
        None if cfg["clip_grad"] is None else _real(cfg, "clip_grad", 0.0, strict=True)
    )
    if not isinstance(cfg["resume"], bool):
        raise ValueError(f"cfg['resume']: expected true or false, got {cfg['resume']!r}")
    out["resume"] = cfg["resume"]
    out["num_threads"] = None if cfg["num_threads"] is None else _int(cfg, "num_threads", 1)
    if not isinstance(cfg["device"], str):
        raise ValueError(f"cfg['device']: expected 'auto', 'cpu' or 'cuda', got {cfg['device']!r}")
    out["device"] = cfg["device"]
    if cfg["amp"] not in AMP_MODES:
        raise ValueError(f"cfg['amp']: expected one of {list(AMP_MODES)}, got {cfg['amp']!r}")
    out["amp"] = cfg["amp"]
    return out


def cfg_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Training-relevant keys whose values differ between a checkpoint's cfg and this run's."""
    keys = (set(stored) | set(current)) - RUNTIME_KEYS
    return sorted(k for k in keys if stored.get(k) != current.get(k))
