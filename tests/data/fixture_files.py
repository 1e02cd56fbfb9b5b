"""Fixture data in the real formats: a tiny CIFAR-10 python archive and a tiny image folder.

Plain functions rather than conftest fixtures, so that ``conftest`` stays the project's own.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
PER_BATCH = 4  # images in each of data_batch_1..5
N_TEST = 6


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the CIFAR-10 files: strings and bytes as Python 2
    ``str`` opcodes, numpy under its numpy 1 module name (``numpy.core.multiarray``)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global


def dumps(obj, python2: bool) -> bytes:
    if not python2:
        return pickle.dumps(obj, protocol=2)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar_folder(raw_dir: Path, seed: int = 0, python2: bool = True) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ as the archive holds it: protocol-2 pickles of dicts with b"data",
    b"labels" (and b"label_names" in batches.meta), written as by Python 2 or by Python 3.

    Returns the expected arrays: train/test data [N, 3072] and labels.
    """
    rng = np.random.default_rng(seed)
    folder = raw_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected: dict[str, list] = {
        "train_data": [],
        "train_labels": [],
        "test_data": [],
        "test_labels": [],
    }
    batches = [(f"data_batch_{i}", "train", PER_BATCH) for i in range(1, 6)]
    for name, part, n in [*batches, ("test_batch", "test", N_TEST)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, len(CIFAR_CLASSES), size=n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(dumps(batch, python2))
        expected[f"{part}_data"].append(data)
        expected[f"{part}_labels"] += labels
    meta = {
        b"num_cases_per_batch": PER_BATCH,
        b"label_names": [c.encode() for c in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(dumps(meta, python2))
    return {
        "train_data": np.concatenate(expected["train_data"]),
        "train_labels": np.array(expected["train_labels"]),
        "test_data": np.concatenate(expected["test_data"]),
        "test_labels": np.array(expected["test_labels"]),
    }


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def solid_image(path: Path, size: tuple[int, int], color, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_cifar_archive(tmp_path: Path) -> tuple[Path, str, dict[str, np.ndarray]]:
    """A tiny cifar-10-python.tar.gz in tmp_path/served: (archive, its md5, expected arrays)."""
    build = tmp_path / "build"
    expected = write_cifar_folder(build)
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, md5_of(archive), expected


def write_image_folder(tmp_path: Path) -> Path:
    """train/ and val/ with classes cat and dog, PNG and JPEG files, and stray files to skip.

    Every image is one solid color, so resized crops of it are that color exactly.
    """
    root = tmp_path / "imagenet"
    for part, n in (("train", 3), ("val", 2)):
        for label, cls in enumerate(("cat", "dog")):
            for i in range(n):
                color = (10 + 100 * label, 20 * i, 200)
                ext = "png" if i % 2 == 0 else "JPEG"
                solid_image(root / part / cls / f"{cls}_{i}.{ext}", (20 + 7 * i, 30), color)
    solid_image(root / "train" / "dog" / "sub" / "grey.png", (25, 25), 128, mode="L")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"")
    return root
