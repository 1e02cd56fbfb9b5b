"""The process group of a data-parallel run under torchrun, for every layer of the project.

``torchrun --nproc_per_node=N -m kedro run ...`` starts N processes and describes the run in
their environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Outside torchrun, or
with one process, every function here describes a single process (rank 0 of 1) and no group is
created.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def is_initialized() -> bool:
    """Whether this process belongs to an initialized default process group."""
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> bool:
    """Join the default process group that torchrun's environment describes; True when this is a
    data-parallel run (WORLD_SIZE > 1), False for a single process, where nothing is done.

    With CUDA available each process uses cuda:LOCAL_RANK, and the group runs NCCL for CUDA
    tensors and gloo for CPU tensors (object collectives and barriers); gloo alone otherwise.
    Idempotent (a group that already exists is kept); the group is destroyed at interpreter exit.
    """
    if is_initialized():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(destroy)
    return True


def destroy() -> None:
    """Leave and destroy the default process group, if there is one."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank among all processes (0 outside a data-parallel run)."""
    return dist.get_rank() if is_initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine: the index of its GPU (0 outside torchrun)."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """The number of processes (1 outside a data-parallel run)."""
    return dist.get_world_size() if is_initialized() else _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on rank 0, the process that writes files and logs."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other processes once rank 0 is through (a
    download that the others then find done); a plain block in a single process."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over all processes ("sum", "min" or "max") and return it."""
    if is_initialized():
        reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=reduce_op[op])
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every process; ``obj`` itself in a single process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
