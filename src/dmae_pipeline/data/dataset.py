"""The torch Dataset every training and evaluation loop reads a split through."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dmae_pipeline.data.splits import check_split
from dmae_pipeline.data.transforms import to_float


class SplitDataset(Dataset):
    """Yields ``(image float32 [C, H, W] in [0, 1], label int)`` from a split of either form.

    In-memory images reach ``transform`` as uint8 tensors; on-disk files are decoded with PIL
    as RGB, one per item, in the DataLoader's workers. ``transform`` (torchvision v2) must end
    in a float tensor in [0, 1]; the default only converts.
    """

    def __init__(self, split: Mapping[str, Any], transform: Callable | None = None):
        self.on_disk = check_split(split) == "disk"
        self.labels: torch.Tensor = split["labels"]
        self.transform = transform if transform is not None else to_float()
        if self.on_disk:
            self.root = Path(split["root"])
            # One numpy bytes array rather than a list of str: forked workers then share it
            # instead of copying every string as they touch its reference count.
            self._paths = np.array([p.encode("utf-8") for p in split["paths"]], dtype=np.bytes_)
        else:
            self._images: torch.Tensor = split["images"]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return self.root / self._paths[index].decode("utf-8")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.on_disk:
            with Image.open(self.path(index)) as f:
                image = f.convert("RGB")
        else:
            image = self._images[index]
        return self.transform(image).as_subclass(torch.Tensor), int(self.labels[index])
