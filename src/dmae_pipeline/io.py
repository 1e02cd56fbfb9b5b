"""What every layer shares: atomic writes, code-free loading, state digests, run locks and the
error a user can fix."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


class UserError(ValueError):
    """Something the user gave is wrong (a parameter, an env, a pipeline name, an input file);
    the message names it and says what to do. ``kedro run`` (``dmae_pipeline.cli``) reports it as
    that message alone; any other error is a bug and keeps its traceback."""


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def safe_torch_load(path: str | Path | IO[bytes], map_location: Any = "cpu") -> Any:
    """``torch.load`` that refuses pickled code, with an error that names the file.

    Besides tensors and plain containers it accepts ``argparse.Namespace`` (the ``args`` of the
    public DMAE/MAE training checkpoints); the allowance holds for this call only.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        msg = f"{path} is not a readable torch file (corrupt, or holds code): {e}"
        raise ValueError(msg) from e


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON value with its keys sorted (a dataset spec, say)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's names and tensor bytes (of its 'model' entry if it has one)."""
    tensors = state["model"] if isinstance(state.get("model"), Mapping) else state
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LockedError(UserError):
    """Another process holds the lock."""


def command_line() -> str:
    """This process's command line as a user typed it (``kedro run --pipelines=certify``; under
    torchrun, ``python -m kedro run``: Python names a module's program "python -m kedro")."""
    if not sys.argv:
        return "python"
    return " ".join([Path(sys.argv[0]).name, shlex.join(sys.argv[1:])]).strip()


def _holder() -> str:
    """This process as a lock names it: pid, host and command line."""
    return f"pid {os.getpid()} on {socket.gethostname()}, `{command_line()}`"


@contextmanager
def exclusive_lock(path: str | Path, what: str):
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    A second process asking for the same lock fails at once with a :class:`LockedError` naming
    ``what`` and the holder (pid, host, command line). The operating system drops the lock when
    its holder exits, even on ``kill -9``, so a dead run never blocks the next one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that did not say which"
            raise LockedError(
                f"another process ({holder}) is using {what}; wait for it to finish, or "
                f"stop it (the lock {path} is released when its process exits)"
            ) from None
        f.truncate(0)
        f.write(_holder())
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
