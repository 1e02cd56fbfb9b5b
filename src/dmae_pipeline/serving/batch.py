"""Batch prediction: the images of a folder or an array file as a dataset for
``smoothing.certify_dataset`` (unlabelled), and its log as the smoothed classifier's rows.

A folder holds PNG and JPEG files (searched recursively, in sorted order of their paths relative
to it): each is decoded as the dataset's channels (grey or RGB) and passes through the dataset's
eval transform, as the test split does: image-folder datasets resize and center-crop any size,
digits and CIFAR-10 take their native resolution alone. An array file is a ``.npy`` of
N x C x H x W float32 pixels in [0, 1] at the native resolution. Image ``idx`` (its place in that
order) is certified as ``certify`` certifies test image ``idx``: with noise seeded
``image_seed(seed, idx)``, so its row is the served model's answer for that image alone with
``seed = image_seed(seed, idx)``, however the images are split over processes.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dmae_pipeline.data import build_transform
from dmae_pipeline.data.transforms import ON_DISK_SOURCES
from dmae_pipeline.serving.classifier import answers, check_images
from dmae_pipeline.smoothing.log import Log

FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg")}
"""The image files a folder may hold, by PIL format, with their suffixes."""
SUFFIXES = tuple(suffix for suffixes in FORMATS.values() for suffix in suffixes)
PIL_MODES = {1: "L", 3: "RGB"}
"""How a file is decoded for a dataset of 1 or 3 channels."""


@dataclass(frozen=True)
class Inputs:
    """Images to predict; ``inputs[idx]`` is (image float32 [C, H, W] in [0, 1], None): a
    dataset of unlabelled images for ``certify_dataset``.

    :param path: the folder or the array file
    :param files: a folder's image files, relative to it (None for an array)
    :param images: an array's images (None for a folder)
    :param spec: the dataset spec, whose eval transform the files pass through
    :param digest: SHA-256 of the files' names and bytes, or of the array file
    """

    path: Path
    files: tuple[str, ...] | None
    images: torch.Tensor | None
    spec: Mapping[str, Any]
    digest: str

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, None]:
        if self.files is None:
            return self.images[idx], None
        path = self.path / self.files[idx]
        try:
            with Image.open(path) as f:
                image = f.convert(PIL_MODES[self.spec["channels"]])
        except OSError as e:
            raise ValueError(f"{path} cannot be decoded: {e}") from None
        return self.transform(image), None

    @cached_property
    def transform(self):
        """The dataset's eval transform, which the files pass through."""
        return build_transform(self.spec, train=False)

    @property
    def described(self) -> dict[str, Any]:
        """What the images are, for ``fingerprint``: the spec (the transform) and the digest."""
        kind = "array" if self.files is None else "folder"
        return {"input": kind, "spec": dict(self.spec), "digest": self.digest}


def read_inputs(path: str | Path, spec: Mapping[str, Any]) -> Inputs:
    """The images of ``path``, a folder of PNG/JPEG files or a ``.npy`` array file, for a model
    of the dataset ``spec`` (``source``, ``image_size``, ``channels``); a FileNotFoundError or a
    ValueError naming the path or file and what is expected, before any image is certified."""
    path = Path(path)
    if path.is_dir():
        return _folder(path, spec)
    if path.is_file() and path.suffix.lower() == ".npy":
        return _array(path, spec)
    expected = (
        "a folder of PNG/JPEG images or an .npy file of N x C x H x W float32 images in [0, 1]"
    )
    if path.exists():
        raise ValueError(f"{path} is neither a folder nor an .npy file: expected {expected}")
    raise FileNotFoundError(f"{path} does not exist: expected {expected}")


def _folder(path: Path, spec: Mapping[str, Any]) -> Inputs:
    if spec["channels"] not in PIL_MODES:
        raise ValueError(f"image files decode to 1 or 3 channels, not {spec['channels']}")
    files = _files(path)
    others = [f for f in files if not f.lower().endswith(SUFFIXES)]
    if others:
        raise ValueError(
            f"{path} holds {len(others)} file(s) that are not PNG or JPEG images, such as "
            f"{', '.join(others[:3])}: expected only {', '.join(SUFFIXES)} files"
        )
    if not files:
        raise ValueError(f"{path} holds no images: expected {', '.join(SUFFIXES)} files")
    size = spec["image_size"]
    digest = hashlib.sha256()
    for name in files:
        data = (path / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
        try:
            with Image.open(io.BytesIO(data)) as image:
                found, width, height = image.format, *image.size
                image.verify()
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path / name} is not a readable PNG or JPEG image: {e}") from None
        if found not in FORMATS:
            raise ValueError(f"{path / name} is a {found} image, not PNG or JPEG")
        if spec["source"] not in ON_DISK_SOURCES and (width, height) != (size, size):
            raise ValueError(
                f"{path / name} is {width}x{height}: a {spec['name']} model takes {size}x{size} "
                "images, the dataset's native resolution (only image-folder datasets resize)"
            )
    return Inputs(path, tuple(files), None, dict(spec), digest.hexdigest())


def _files(path: Path) -> list[str]:
    """Every file under ``path`` but hidden ones, relative to it, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        prefix = PurePath(os.path.relpath(dirpath, path))
        found += [(prefix / f).as_posix() for f in sorted(filenames) if not f.startswith(".")]
    return sorted(found)


def _array(path: Path, spec: Mapping[str, Any]) -> Inputs:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array file: {e}") from None
    size = spec["image_size"]
    try:
        images = check_images(array, (spec["channels"], size, size))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Inputs(path, None, images, dict(spec), digest)


def predictions(log: Log, inputs: Inputs, sigma: float, class_names: Sequence[str]) -> pd.DataFrame:
    """A prediction log (``UNLABELLED_LOG_COLUMNS``) as the smoothed classifier's rows, in the
    log's order: ``idx``, ``file`` (a folder's files only), then ``COLUMNS``."""
    rows = {"prediction": log["predict"], "radius": log["radius"], "p_a_lower": log["pA_lower"]}
    table = answers({**rows, "n": log["n"]}, sigma, class_names)
    if inputs.files is not None:
        table.insert(0, "file", [inputs.files[i] for i in log["idx"]])
    table.insert(0, "idx", log["idx"])
    return table
