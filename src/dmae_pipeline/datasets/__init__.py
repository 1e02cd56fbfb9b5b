"""Custom Kedro datasets for what kedro-datasets does not cover."""

from dmae_pipeline.datasets.torch_file import TorchFileDataset

__all__ = ["TorchFileDataset"]
