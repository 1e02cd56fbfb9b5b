"""The project's data catalog: Kedro's, with rank 0 alone writing under torchrun."""

from __future__ import annotations

from typing import Any

from kedro.io import DataCatalog, MemoryDataset

from dmae_pipeline import distributed


class DistributedCatalog(DataCatalog):
    """Kedro's DataCatalog; in a data-parallel run (a process group under torchrun) only rank 0
    saves to files and MLflow, and every rank then waits at a barrier until that save is done.

    Every process runs every node and saves every output, so the other ranks' saves of file and
    tracking datasets are dropped; when a later node loads such a dataset, each rank reads what
    rank 0 wrote, exactly as in one process. In-memory datasets (MemoryDataset outputs) keep
    each process's own value. Without a process group this is DataCatalog.
    """

    def save(self, ds_name: str, data: Any) -> None:
        if not distributed.is_initialized() or isinstance(self[ds_name], MemoryDataset):
            super().save(ds_name, data)
            return
        if distributed.is_main():
            super().save(ds_name, data)
        distributed.barrier()
