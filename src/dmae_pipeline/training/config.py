"""The training engine's settings: a plain typed record, validated by whoever builds it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run of :func:`dmae_pipeline.training.fit`.

    The batch fields describe the run whatever the number of processes: the effective batch
    (samples per optimizer step, all processes together) is ``batch_size * accum_iter``, and
    :func:`dmae_pipeline.training.split_batch` says how the processes of a data-parallel run
    share it.

    Attributes:
        epochs: passes over the training set (>= 1).
        warmup_epochs: epochs of linear lr warmup from 0 (fractional allowed, <= epochs).
        blr: base learning rate; the peak lr is blr * batch_size * accum_iter / 256.
        min_lr: the lr the half-cycle cosine ends at after ``epochs`` (<= the peak lr).
        batch_size: samples per forward pass on one process (the micro-batch).
        weight_decay: AdamW's decoupled weight decay for weight matrices (biases, norms,
            position embeddings and tokens get none).
        betas: AdamW's (beta1, beta2).
        seed: seeds every random stream of the run (data order, noise, dropout, augmentation).
        checkpoint_every: epochs between two writes of ``last.pt`` (it is also written at the
            end).
        accum_iter: micro-batches per optimizer step on one process (default 1).
        clip_grad: the maximal global gradient norm; None (default) does not clip.
        resume: continue from ``run_dir/last.pt`` when it exists (default True).
        num_workers: DataLoader worker processes (default 0: load in the training process).
        num_threads: torch's CPU threads during the run; None (default) leaves the setting.
        device: "auto" (default: CUDA when available, else the CPU), "cpu", "cuda" or
            "cuda:N". Under torchrun "auto" and "cuda" mean cuda:LOCAL_RANK.
        amp: autocast precision: "auto" (default: bf16 on CUDA, full precision on the CPU),
            "bf16", "fp16" (CUDA only, with loss scaling) or "off".
        compile: ``torch.compile`` the model (default False); training continues eagerly,
            with a warning, where compilation fails.
    """

    epochs: int
    warmup_epochs: float
    blr: float
    min_lr: float
    batch_size: int
    weight_decay: float
    betas: tuple[float, float]
    seed: int
    checkpoint_every: int
    accum_iter: int = 1
    clip_grad: float | None = None
    resume: bool = True
    num_workers: int = 0
    num_threads: int | None = None
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False


# Settings that may change between a run and its resumption: they change how the run is
# executed, not what it computes.
RUNTIME_KEYS = frozenset(
    {"resume", "checkpoint_every", "num_workers", "num_threads", "device", "compile"}
)


def training_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide what a run computes (all but RUNTIME_KEYS), as plain values."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS}


def cfg_mismatch(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Names of the computing settings that differ between a checkpoint's stored settings
    (``asdict`` of the TrainConfig that wrote it) and ``cfg``."""
    current = training_identity(cfg)
    names = current.keys() | (stored.keys() - RUNTIME_KEYS)
    return sorted(k for k in names if _plain(stored.get(k)) != _plain(current.get(k)))


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
