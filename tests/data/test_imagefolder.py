"""Image folders: the manifest, streaming through SplitDataset, and layout errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from fixture_files import solid_image, write_image_folder
from PIL import Image
from torch.utils.data import DataLoader

from dmae_pipeline.catalog import TorchFileDataset
from dmae_pipeline.data import (
    SplitDataset,
    build_transform,
    prepare,
    read_imagefolder,
)


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path)


TRAIN_PATHS = [
    "train/cat/cat_0.png",
    "train/cat/cat_1.JPEG",
    "train/cat/cat_2.png",
    "train/dog/dog_0.png",
    "train/dog/dog_1.JPEG",
    "train/dog/dog_2.png",
    "train/dog/sub/grey.png",
]


def test_manifest_lists_files_without_opening_them(image_folder, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("prep must not open images")

    monkeypatch.setattr(Image, "open", no_decoding)
    source = read_imagefolder(image_folder)
    assert source.class_names == ["cat", "dog"]
    train, test = source.splits["train"], source.splits["test"]
    assert train == {
        "root": str(image_folder),
        "paths": TRAIN_PATHS,
        "labels": train["labels"],
    }
    assert train["labels"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert train["labels"].dtype == torch.int64
    assert test["paths"] == [
        "val/cat/cat_0.png",
        "val/cat/cat_1.JPEG",
        "val/dog/dog_0.png",
        "val/dog/dog_1.JPEG",
    ]
    assert test["labels"].tolist() == [0, 0, 1, 1]
    assert source.channels == 3 and len(source.mean) == 3


def test_prepare_carves_val_from_train_and_uses_val_folder_as_test(image_folder):
    spec, splits = prepare("imagefolder", 16, raw_dir=image_folder, val_fraction=0.3)
    assert spec["split_sizes"] == {"train": 5, "val": 2, "test": 4}
    assert spec["class_names"] == ["cat", "dog"] and spec["num_classes"] == 2
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert spec["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert sorted(splits["train"]["paths"] + splits["val"]["paths"]) == sorted(TRAIN_PATHS)
    assert all(p.startswith("val/") for p in splits["test"]["paths"])
    for split in splits.values():
        for path, label in zip(split["paths"], split["labels"].tolist(), strict=True):
            assert path.split("/")[1] == spec["class_names"][label]


def test_split_dataset_streams_files_at_the_spec_resolution(image_folder, tmp_path):
    spec, splits = prepare("imagefolder", 16, raw_dir=image_folder)
    # The manifest survives the catalog's code-free torch file round trip.
    stored = TorchFileDataset(str(tmp_path / "test.pt"))
    stored.save(splits["test"])
    loaded = stored.load()
    assert loaded["paths"] == splits["test"]["paths"]
    assert torch.equal(loaded["labels"], splits["test"]["labels"])

    dataset = SplitDataset(loaded, build_transform(spec, train=False))
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 1, 1]
    # Solid-color files: a resized center crop is the file's color (JPEG within rounding).
    expected = torch.tensor([[10, 0, 200], [10, 20, 200], [110, 0, 200], [110, 20, 200]]) / 255
    assert torch.allclose(images.mean(dim=(2, 3)), expected, atol=3 / 255)
    assert torch.allclose(images[0], expected[0].view(3, 1, 1).expand(3, 16, 16), atol=1e-6)


def test_grey_files_decode_as_rgb_and_training_crops_reach_the_spec_size(image_folder):
    spec = {"source": "imagefolder", "image_size": 12, "mean": [0.5] * 3}
    split = read_imagefolder(image_folder).splits["train"]
    augment = {"random_resized_crop": {"scale": [0.3, 1.0]}, "hflip": True}
    dataset = SplitDataset(split, build_transform(spec, train=True, augment=augment))
    image, label = dataset[TRAIN_PATHS.index("train/dog/sub/grey.png")]
    assert image.shape == (3, 12, 12) and label == 1
    assert torch.allclose(image, torch.full_like(image, 128 / 255), atol=1e-6)
    # Without a transform, the default only converts: the file's own size comes back.
    raw, _ = SplitDataset(split)[0]
    assert raw.shape == (3, 30, 20) and raw.dtype == torch.float32


def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imagenet/train does not exist.*train/<class>/"):
        read_imagefolder(tmp_path / "imagenet")


def test_val_without_train_class_is_refused(image_folder):
    solid_image(image_folder / "val" / "zebra" / "z.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match=r"class folders missing from train/: \['zebra'\]"):
        read_imagefolder(image_folder)


def test_train_class_without_images_is_refused(image_folder):
    shutil.rmtree(image_folder / "train" / "dog")
    (image_folder / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"train/dog holds no images"):
        read_imagefolder(image_folder)
