"""The bundled digits: scaling, upscaling and the seeded three-way split."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from dmae_pipeline.data import prepare, read_digits
from dmae_pipeline.data.prepare import channel_stats


def test_native_digits_are_scaled_to_uint8():
    source = read_digits(8)
    images, labels = source.splits["train"]["images"], source.splits["train"]["labels"]
    bunch = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    expected = torch.from_numpy(bunch.images * 255 / 16).round().to(torch.uint8)
    assert torch.equal(images[:, 0], expected)
    assert labels.dtype == torch.int64 and labels.tolist() == bunch.target.tolist()
    assert source.class_names == [str(d) for d in range(10)] and source.channels == 1
    assert source.mean is None  # computed from the train split by prepare


def test_upscaled_digits_keep_their_ink():
    small = read_digits(8).splits["train"]["images"].float()
    large = read_digits(32).splits["train"]["images"]
    assert large.shape == (1797, 1, 32, 32)
    # Bicubic upscaling keeps the mean brightness of each image (up to ringing at edges).
    assert torch.allclose(large.float().mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=4)
    assert large.max() == 255 and large.min() == 0


def test_prepare_splits_all_digits_by_seed_and_takes_stats_from_train():
    params = {"source": "digits", "image_size": 12, "val_fraction": 0.1, "test_fraction": 0.2}
    spec, splits = prepare(**params)
    assert spec["split_sizes"] == {"train": 1258, "val": 180, "test": 359}
    assert (spec["name"], spec["num_classes"], spec["image_size"], spec["channels"]) == (
        "digits",
        10,
        12,
        1,
    )
    mean, std = channel_stats(splits["train"]["images"])
    assert spec["mean"] == mean and spec["std"] == std
    pixels = splits["train"]["images"].double() / 255
    assert mean[0] == pytest.approx(pixels.mean().item()) and std[0] == pytest.approx(
        pixels.std(correction=0).item()
    )
    # The three splits are a partition of the 1,797 images (compared as labelled images).
    every = read_digits(12).splits["train"]
    parts = [splits[n] for n in ("train", "val", "test")]
    combined = torch.cat([p["images"] for p in parts]), torch.cat([p["labels"] for p in parts])
    assert labelled_images(*combined) == labelled_images(every["images"], every["labels"])
    again = prepare(**params)[1]
    assert all(torch.equal(again[n]["images"], splits[n]["images"]) for n in splits)
    other = prepare(**{**params, "seed": 5})[1]
    assert not torch.equal(other["test"]["images"], splits["test"]["images"])


def labelled_images(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[bytes, int]]:
    return sorted(
        (image.numpy().tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
    )
