"""A run folder's fingerprint (run.json), so that a changed run never resumes its checkpoints,
and a checkpoint's provenance, so that a model is never used on data it may have trained on.

``fit`` checks the training settings itself; the fingerprint adds what the engine cannot see: the
model, the data, the augmentation, the initial weights, the loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dmae_pipeline import distributed
from dmae_pipeline.io import UserError, atomic_write, json_digest, state_digest
from dmae_pipeline.training.checkpoint import LAST

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {
            k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): value}


def check_run_dir(run_dir: Path, fingerprint: Mapping[str, Any], resume: bool) -> None:
    """Refuse a checkpoint in ``run_dir`` that a run of another ``fingerprint`` left there."""
    record, last = run_dir / RUN_RECORD, run_dir / LAST
    if not resume or not last.exists():
        return
    stored = json.loads(record.read_text()) if record.exists() else {}
    old, new = _flat(stored), _flat(json.loads(json.dumps(fingerprint)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        sections = sorted({k.split(".")[0] for k in changed})
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise UserError(
            f"{run_dir} holds a run with other settings ({', '.join(sections)}): {details}; "
            "delete it to start this run over (other runs still resume), or turn resume off to "
            "start every run over"
        )


def claim_run_dir(run_dir: Path, fingerprint: Mapping[str, Any], resume: bool) -> None:
    """Check ``run_dir`` and record ``fingerprint`` there. Without ``resume`` an earlier checkpoint
    is removed first, so that a run dying before its first checkpoint cannot leave it behind
    under this run's record. In a data-parallel run only rank 0 writes; the others check."""
    if not distributed.is_main():
        check_run_dir(run_dir, fingerprint, resume)
        return
    last = run_dir / LAST
    if not resume and last.exists():
        logger.warning("resume is off: starting over, %s is removed", last)
        last.unlink()
    check_run_dir(run_dir, fingerprint, resume)
    with atomic_write(run_dir / RUN_RECORD, "w") as f:
        json.dump(fingerprint, f, indent=2)


class DataMismatchError(UserError):
    """A checkpoint was trained on other splits than the current ones."""


def provenance(spec: Mapping[str, Any], init: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    """What a checkpoint was trained on: the dataset spec's and its splits' digests, and the
    digest of its initial weights (None: from scratch)."""
    return {
        "dataset_spec": json_digest(spec),
        "splits": dict(spec["split_digests"]),
        "init_sha256": None if init is None else state_digest(init),
    }


def check_provenance(checkpoint: Any, spec: Mapping[str, Any], name: str, use: str) -> None:
    """Refuse to ``use`` (certify, train from) a checkpoint trained on other splits than those
    of ``spec``, naming both. A checkpoint without provenance (a released file, the public DMAE
    code's) is taken as it is."""
    recorded = checkpoint.get("provenance") if isinstance(checkpoint, Mapping) else None
    if recorded is None:
        logger.info("%s records no training data; it is taken as it is", name)
        return
    theirs, ours = recorded["splits"], spec["split_digests"]
    if theirs != ours:

        def short(digests: Mapping[str, str]) -> str:
            return ", ".join(f"{part} {digests[part][:12]}" for part in sorted(digests))

        raise DataMismatchError(
            f"{name} was trained on other splits ({short(theirs)}) than the current ones "
            f"({short(ours)}, from data_prep), so its training images may be among the test "
            f"images; cannot {use} it. Train it again on the current splits, or restore the "
            "data_prep parameters it was trained with and run data_prep again"
        )
