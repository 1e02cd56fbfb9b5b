"""Custom Kedro datasets for what kedro-datasets does not cover, and the project's catalog."""

from dmae_pipeline.datasets.catalog import DistributedCatalog
from dmae_pipeline.datasets.torch_file import TorchFileDataset

__all__ = ["DistributedCatalog", "TorchFileDataset"]
