"""build_transform and SplitDataset on in-memory splits: shapes, ranges and augment checks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dmae_pipeline.data import SplitDataset, build_transform

SPEC = {"source": "digits", "image_size": 16, "channels": 1, "mean": [0.3], "std": [0.2]}


def in_memory(n=6, channels=1, size=16):
    images = torch.randint(
        0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0)
    )
    return {"images": images.to(torch.uint8), "labels": torch.arange(n) % 3}


def test_default_transform_only_converts_to_unit_range():
    split = in_memory()
    dataset = SplitDataset(split)
    assert len(dataset) == 6
    image, label = dataset[4]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert torch.allclose(image, split["images"][4] / 255, rtol=0, atol=1e-7) and label == 1
    images, labels = next(iter(DataLoader(dataset, batch_size=6)))
    assert images.shape == (6, 1, 16, 16) and labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_eval_transform_of_in_memory_images_converts_only():
    split = in_memory()
    image = build_transform(SPEC, train=False, augment={"hflip": True})(split["images"][0])
    assert torch.allclose(image, split["images"][0] / 255, rtol=0, atol=1e-7)


def test_hflip_flips_about_half_the_time():
    torch.manual_seed(0)
    image = in_memory(n=1)["images"][0]
    assert not torch.equal(image, image.flip(-1))  # a flip shows
    transform = build_transform(SPEC, train=True, augment={"hflip": True})
    flips = 0
    for _ in range(400):
        out = transform(image)
        if torch.allclose(out, image.flip(-1) / 255, rtol=0, atol=1e-7):
            flips += 1
        else:
            assert torch.allclose(out, image / 255, rtol=0, atol=1e-7)
    assert abs(flips - 200) < 5 * 10  # Binomial(400, 0.5): sd 10


def seed_all(seed: int) -> None:
    """torchvision draws from torch's global generator, timm's RandAugment from Python's and
    numpy's."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def draws(transform, image, n=20, seed=0) -> list[torch.Tensor]:
    seed_all(seed)
    return [transform(image) for _ in range(n)]


@pytest.mark.parametrize(
    ("augment", "least_changed"),
    [
        ({"rand_augment": "rand-m9-mstd0.5-inc1"}, 8),  # no op with probability 1/4
        ({"random_resized_crop": {"scale": [0.2, 1.0]}}, 20),
    ],
    ids=["rand_augment", "random_resized_crop"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_change_the_image(augment, least_changed, channels):
    """Over 20 draws the image changes (a no-op would change none), differently from draw to
    draw; the same seeds give the same draws."""
    spec = {**SPEC, "channels": channels, "mean": [0.3] * channels}
    image = in_memory(n=1, channels=channels)["images"][0]
    transform = build_transform(spec, train=True, augment=augment)
    outs = draws(transform, image)
    assert all(out.shape == (channels, 16, 16) for out in outs)
    changed = [out for out in outs if not torch.allclose(out, image / 255, rtol=0, atol=1e-6)]
    assert len(changed) >= least_changed
    assert len({out.numpy().tobytes() for out in changed}) >= least_changed // 2
    assert all(torch.equal(a, b) for a, b in zip(outs, draws(transform, image), strict=True))


def test_eval_transform_of_files_is_deterministic():
    """Files are resized to size / 0.875 and center-cropped, the same way at every call."""
    spec = {"source": "imagefolder", "image_size": 16, "mean": [0.5] * 3}
    pixels = np.random.default_rng(0).integers(0, 256, (23, 29, 3), dtype=np.uint8)
    transform = build_transform(spec, train=False, augment={"hflip": True})
    outs = [o for seed in range(3) for o in draws(transform, Image.fromarray(pixels), 3, seed)]
    assert outs[0].shape == (3, 16, 16) and outs[0].dtype == torch.float32
    assert all(torch.equal(out, outs[0]) for out in outs)


@pytest.mark.parametrize("channels", [1, 3])
def test_full_training_augmentation_ends_at_native_size_in_unit_range(channels):
    torch.manual_seed(0)
    np.random.seed(0)  # timm's RandAugment draws from numpy's and Python's global generators
    spec = {**SPEC, "channels": channels, "mean": [0.3] * channels}
    augment = {
        "hflip": True,
        "random_resized_crop": {"scale": [0.2, 1.0]},
        # Magnitude 10 makes posterize keep 0 bits, which Pillow itself refuses.
        "rand_augment": "rand-m10-inc1",
    }
    dataset = SplitDataset(in_memory(channels=channels), build_transform(spec, True, augment))
    for _ in range(40):
        images, _ = next(iter(DataLoader(dataset, batch_size=6)))
        assert images.shape == (6, channels, 16, 16) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1


def test_a_config_timm_does_not_know_is_refused():
    with pytest.raises(ValueError, match=r"augment\.rand_augment='rand-q9' is not a timm"):
        build_transform(SPEC, train=True, augment={"rand_augment": "rand-q9"})
