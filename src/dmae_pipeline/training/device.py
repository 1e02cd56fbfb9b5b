"""Device, mixed precision and CPU determinism for the training engine."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Annotated, Literal

import torch
from pydantic import Field

from dmae_pipeline import distributed

DEVICE_NAME = r"auto|cpu|cuda(:\d+)?"
Device = Annotated[str, Field(pattern=rf"^({DEVICE_NAME})$")]
"""A device name that :func:`resolve_device` accepts."""
Amp = Literal["auto", "bf16", "fp16", "off"]
"""An autocast precision that :func:`autocast_dtype` accepts."""


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``: "auto" (CUDA when available, else the CPU), "cpu", "cuda"
    or "cuda:N". "auto" and "cuda" mean this process's GPU, cuda:LOCAL_RANK under torchrun."""
    if not re.fullmatch(DEVICE_NAME, name):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", distributed.local_rank())
    return device


def autocast_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means full fp32.

    ``"auto"`` is bf16 on CUDA (no loss scaling needed) and fp32 on the CPU.
    """
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on the CPU")
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


@contextmanager
def runtime(device: torch.device, num_threads: int | None):
    """Deterministic kernels on the CPU and a fixed thread count; both restored on exit."""
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    prev_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        yield
    finally:
        torch.use_deterministic_algorithms(prev_deterministic, warn_only=prev_warn_only)
        torch.set_num_threads(prev_threads)
