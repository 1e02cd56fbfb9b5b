"""Dataset sources, splits, transforms and the torch Dataset the training loops read.

Sources: scikit-learn's digits (bundled), CIFAR-10 (python-version archive) and image folders in
the ImageNet layout (streamed from disk). No Kedro here: the data_prep pipeline wires it up.
"""

from dmae_pipeline.data.cifar10 import download_file, read_cifar10
from dmae_pipeline.data.dataset import SplitDataset
from dmae_pipeline.data.digits import read_digits
from dmae_pipeline.data.imagefolder import read_imagefolder
from dmae_pipeline.data.prepare import SourceName, expected_spec, prepare, read_source
from dmae_pipeline.data.splits import (
    Source,
    check_split,
    split_indices,
    split_length,
    subset,
)
from dmae_pipeline.data.transforms import build_transform

__all__ = [
    "Source",
    "SourceName",
    "SplitDataset",
    "build_transform",
    "check_split",
    "download_file",
    "expected_spec",
    "prepare",
    "read_cifar10",
    "read_digits",
    "read_imagefolder",
    "read_source",
    "split_indices",
    "split_length",
    "subset",
]
