"""Image folders in the ImageNet layout, indexed as a manifest; pixels stay on disk.

``root/train/<class>/**/<image>`` is the training set and ``root/val/<class>/**/<image>`` the
test set (ImageNet's labelled validation images). Classes are the sorted folder names under
``train/``. No image is opened here: DataLoader workers decode them while training.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from dmae_pipeline import distributed
from dmae_pipeline.data.splits import Source

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CHANNELS = 3  # files are decoded as RGB
_PARTS = {"train": "train", "test": "val"}  # split name -> folder


def read_imagefolder(root: str | Path) -> Source:
    """On-disk "train" and "test" splits with paths relative to ``root``."""
    root = Path(root)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise FileNotFoundError(
                f"{root / part} does not exist: an image folder needs {root}/train/<class>/ and "
                f"{root}/val/<class>/ with the images inside (for ImageNet, extract "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there and sort the "
                "validation images into class folders)"
            )
    class_names = _subfolders(root / "train")
    if not class_names:
        raise ValueError(f"{root / 'train'} has no class folders")
    unknown = sorted(set(_subfolders(root / "val")) - set(class_names))
    if unknown:
        raise ValueError(f"{root / 'val'} has class folders missing from train/: {unknown[:5]}")
    return Source(
        splits={part: _manifest(root, folder, class_names) for part, folder in _PARTS.items()},
        class_names=class_names,
        channels=CHANNELS,
        mean=tuple(IMAGENET_DEFAULT_MEAN),
        std=tuple(IMAGENET_DEFAULT_STD),
    )


def _subfolders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _manifest(root: Path, folder: str, class_names: list[str]) -> dict:
    paths: list[str] = []
    labels: list[int] = []
    bar = tqdm(
        class_names,
        desc=f"indexing {folder}/",
        unit="class",
        disable=None if distributed.is_main() else True,  # rank 0's bar alone under torchrun
    )
    for label, name in enumerate(bar):
        class_dir = root / folder / name
        found = _image_files(root, class_dir) if class_dir.is_dir() else []
        if folder == "train" and not found:
            raise ValueError(
                f"{class_dir} holds no images (extensions {', '.join(IMG_EXTENSIONS)})"
            )
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"{root / folder} holds no images in its class folders")
    return {"root": str(root), "paths": paths, "labels": torch.tensor(labels, dtype=torch.int64)}


def _image_files(root: Path, class_dir: Path) -> list[str]:
    """Image files under ``class_dir`` (recursively, in sorted order) relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        prefix = PurePath(os.path.relpath(dirpath, root)).as_posix()
        found += [
            f"{prefix}/{f}"
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)
        ]
    return found
