"""CIFAR-10 from the standard python-version archive, read without executing any pickled code.

``raw_dir`` holds ``cifar-10-python.tar.gz`` (md5-verified, read in place) or its extracted
``cifar-10-batches-py/``. Each batch is a pickle of ``{b"data": uint8 [N, 3072], b"labels": [int]}``
(rows are the R, G and B planes of a 32x32 image); ``batches.meta`` holds ``b"label_names"``.
"""

from __future__ import annotations

import codecs
import os
import pickle
import tarfile
import tempfile
import urllib.error
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torchvision.datasets.utils import calculate_md5, download_url

from dmae_pipeline.data.splits import Source

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SIZE = 32
TRAIN_SIZE, TEST_SIZE = 50_000, 10_000
CHANNELS = 3
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)

# The only globals a CIFAR-10 pickle refers to: numpy's array reconstruction (under its numpy 1
# and numpy 2 module names) and, in pickles written by Python 3 with protocol 2, the bytes codec.
_RECONSTRUCT = np.empty(0, np.uint8).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED_GLOBALS``; anything else (a function that a
    crafted pickle would call) is refused before it can be called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 pickle holds only numpy arrays, "
                "lists and strings"
            ) from None


def read_cifar10(
    raw_dir: str | Path, *, download: bool = False, url: str = URL, md5: str = MD5
) -> Source:
    """The 50,000 train and 10,000 test images as uint8 [N, 3, 32, 32] splits.

    With ``download=True`` and no local copy, fetches ``url`` into ``raw_dir`` first.
    """
    raw_dir = Path(raw_dir)
    archive, folder = raw_dir / ARCHIVE, raw_dir / FOLDER
    if archive.is_file():
        check_md5(archive, md5, url)
    elif folder.is_dir():
        return _read_batches(lambda name: open(folder / name, "rb"), str(folder))
    elif download:
        download_file(url, archive, md5)
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found: neither {archive} nor {folder}/ exists. Download {url} "
            f"(md5 {md5}) into {raw_dir}/, or let it be downloaded (download=True)."
        )
    try:
        with tarfile.open(archive, "r:gz") as tar:
            return _read_batches(lambda name: _extract(tar, archive, name), f"{archive}:{FOLDER}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{archive} is truncated or not a gzipped tar archive ({e}); delete it and "
            f"download {url} again"
        ) from e


def _extract(tar: tarfile.TarFile, archive: Path, name: str) -> IO[bytes]:
    try:
        member = tar.extractfile(f"{FOLDER}/{name}")
    except KeyError:
        member = None
    if member is None:
        raise ValueError(f"{archive} has no file {FOLDER}/{name}: it is not the CIFAR-10 archive")
    return member


def _read_batches(open_file: Callable[[str], IO[bytes]], where: str) -> Source:
    meta = _load(open_file, META, where)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where}/{META} has no list 'label_names'")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    train = [_batch(_load(open_file, n, where), f"{where}/{n}", len(names)) for n in TRAIN_BATCHES]
    test = _batch(_load(open_file, TEST_BATCH, where), f"{where}/{TEST_BATCH}", len(names))
    return Source(
        splits={
            "train": {
                "images": torch.cat([images for images, _ in train]),
                "labels": torch.cat([labels for _, labels in train]),
            },
            "test": {"images": test[0], "labels": test[1]},
        },
        class_names=class_names,
        channels=CHANNELS,
        mean=MEAN,
        std=STD,
    )


def _load(open_file: Callable[[str], IO[bytes]], name: str, where: str) -> dict[str, Any]:
    """Unpickle one file of the set; keys come back as str whichever Python wrote them."""
    try:
        with open_file(name) as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}/{name} is missing: CIFAR-10 needs {name}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{where}/{name} is not a readable CIFAR-10 pickle: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}/{name} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch(obj: dict[str, Any], what: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = obj.get("data"), obj.get("labels")
    row = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == row
    ):
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else repr(data)
        raise ValueError(f"{what}: 'data' must be a uint8 array [N, {row}], got {got}")
    if (
        not isinstance(labels, list)
        or len(labels) != len(data)
        or not all(isinstance(label, int) and 0 <= label < num_classes for label in labels)
    ):
        raise ValueError(
            f"{what}: 'labels' must be a list of {len(data)} class indices in 0..{num_classes - 1}"
        )
    images = torch.from_numpy(data.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.tensor(labels, dtype=torch.int64)


def check_md5(path: Path, md5: str, url: str) -> None:
    actual = calculate_md5(path)
    if actual != md5.lower():
        raise ValueError(
            f"{path} has md5 {actual}, expected {md5}: the file is truncated or not the "
            f"expected archive; delete it and download {url} again"
        )


def download_file(url: str, dest: str | Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` (torchvision's ``download_url``, with a progress bar); ``dest``
    appears only if the md5 matches."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        fetched = Path(tmp) / dest.name
        try:
            download_url(url, tmp, dest.name)
        except urllib.error.URLError as e:
            raise ConnectionError(f"could not download {url}: {e.reason}") from e
        actual = calculate_md5(fetched)
        if actual != md5.lower():
            raise ValueError(
                f"download of {url} has md5 {actual}, expected {md5}; nothing was written to {dest}"
            )
        os.replace(fetched, dest)
