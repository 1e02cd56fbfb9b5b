"""The training engine's settings, declared once: the engine reads them, conf/ validates them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from dmae_pipeline.training.device import Amp, Device

RUNTIME_KEYS = frozenset(
    {"resume", "checkpoint_every", "num_workers", "num_threads", "device", "compile"}
)
"""Settings that may change between a run and its resumption: they change how the run is
executed, not what it computes."""


class TrainConfig(BaseModel):
    """Settings of one training run of :func:`dmae_pipeline.training.fit` (immutable).

    The batch fields describe the run whatever the number of processes: the effective batch
    (samples per optimizer step, all processes together) is ``batch_size * accum_iter``, and
    :func:`dmae_pipeline.training.split_batch` says how the processes of a data-parallel run
    share it.

    Attributes:
        epochs: passes over the training set.
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt
    warmup_epochs: NonNegativeFloat
    blr: PositiveFloat
    min_lr: NonNegativeFloat
    batch_size: PositiveInt
    weight_decay: NonNegativeFloat
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]
    seed: NonNegativeInt
    checkpoint_every: PositiveInt
    accum_iter: PositiveInt = 1
    clip_grad: PositiveFloat | None = None
    resume: bool = True
    num_workers: NonNegativeInt = 0
    num_threads: PositiveInt | None = None
    device: Device = "auto"
    amp: Amp = "auto"
    compile: bool = False

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step, all processes together."""
        return self.batch_size * self.accum_iter

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide what a run computes (all but RUNTIME_KEYS)."""
        return self.model_dump(exclude=set(RUNTIME_KEYS))

    def changed_since(self, stored: Mapping[str, Any]) -> list[str]:
        """Names of the computing settings that differ from a checkpoint's ``stored`` ones (the
        ``model_dump`` of the config that wrote it)."""
        current = self.fingerprint()
        names = current.keys() | (stored.keys() - RUNTIME_KEYS)
        return sorted(k for k in names if _plain(stored.get(k)) != _plain(current.get(k)))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
