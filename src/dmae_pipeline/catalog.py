"""What the data catalog is made of beyond Kedro's: its class, where rank 0 alone saves under
torchrun, a dataset type for ``torch.save`` files (checkpoints, splits, state dicts), folders
of partitions that may be empty and MLflow metrics logged in one request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DataCatalog, DatasetError, MemoryDataset
from kedro_datasets.partitions import PartitionedDataset
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis

from dmae_pipeline import distributed
from dmae_pipeline.io import atomic_torch_save, safe_torch_load


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


class TorchFileDataset(AbstractDataset[Any, Any]):
    """Saves any object of tensors, dicts, lists, strings and numbers to one ``.pt`` file.

    Loading uses ``weights_only=True``, so a file can never execute code; saving goes through a
    temporary file and a rename, so a crash never leaves a half-written file. With
    ``optional: true`` a missing file loads as ``None`` instead of failing, for inputs that a
    node may not need (a finetune initialized from scratch, say).
    """

    def __init__(self, filepath: str, optional: bool = False, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._optional = optional
        self.metadata = metadata

    def _load(self) -> Any:
        if not self._filepath.exists():
            if self._optional:
                return None
            raise DatasetError(f"{self._filepath} does not exist: run the pipeline that writes it")
        return safe_torch_load(self._filepath)

    def _save(self, data: Any) -> None:
        atomic_torch_save(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "optional": self._optional}


class OptionalPartitionsDataset(PartitionedDataset):
    """kedro-datasets' PartitionedDataset that loads a folder without partitions as ``{}``, so that
    the node reading it says which partitions are missing and how to make them."""

    def load(self) -> dict[str, Any]:
        return super().load() if self._list_partitions() else {}


class MlflowMetricsBatchDataset(MlflowMetricsHistoryDataset):
    """kedro-mlflow's MlflowMetricsHistoryDataset (same data, names and prefix), saved in one
    ``log_batch`` request instead of one request per value: the report's 1,300 values took 5 s
    one by one against the SQLite store."""

    def _save(self, data: dict[str, Any]) -> None:
        if not self._logging_activated:
            return
        timestamp = get_current_time_millis()
        metrics = [
            Metric(key, value, timestamp, step)
            for name, item in data.items()
            for key, value, step in self._build_args_list_from_metric_item(name, item)
        ]
        MlflowClient().log_batch(self.run_id, metrics=metrics)
