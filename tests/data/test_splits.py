"""Seeded held-out splits, subsets and split validation."""

from __future__ import annotations

import pytest
import torch

from dmae_pipeline.data import check_split, split_indices, split_length, subset
from dmae_pipeline.data.splits import split_digest


def test_split_indices_partitions_every_index_once_with_rounded_sizes():
    parts = split_indices(103, {"val": 0.1, "test": 0.25}, seed=7)
    assert {k: len(v) for k, v in parts.items()} == {"val": 10, "test": 26, "train": 67}
    everything = torch.cat(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(103))
    for indices in parts.values():
        assert torch.equal(indices, indices.sort().values)


def test_split_indices_is_seeded():
    a, b = split_indices(50, {"val": 0.2}, seed=1), split_indices(50, {"val": 0.2}, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["val"], split_indices(50, {"val": 0.2}, seed=2)["val"])


def test_split_indices_draws_held_out_indices_uniformly():
    # Over 400 seeds each index is held out Binomial(400, 0.2) times: mean 80, sd 8.
    counts = torch.zeros(60)
    for seed in range(400):
        counts[split_indices(60, {"val": 0.2}, seed)["val"]] += 1
    assert counts.sum() == 400 * 12
    assert ((counts - 80).abs() < 5 * 8).all(), counts
    # Chi-square of the 60 counts against uniform (59 dof; 99.9% quantile 99.6).
    chi2 = ((counts - 80) ** 2 / 80).sum() * (1 - 0.2) ** -1
    assert chi2 < 99.6


def test_split_indices_errors_name_the_fraction_parameter():
    with pytest.raises(ValueError, match=r"val_fraction=0\.01 holds out no val images out of 20"):
        split_indices(20, {"val": 0.01}, seed=0)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction leaves no training"):
        split_indices(4, {"val": 0.5, "test": 0.5}, seed=0)


def test_subset_of_both_forms():
    images = torch.arange(5 * 2 * 3 * 3, dtype=torch.uint8).reshape(5, 2, 3, 3)
    labels = torch.tensor([0, 1, 2, 3, 4])
    idx = torch.tensor([1, 3])
    part = subset({"images": images, "labels": labels}, idx)
    assert torch.equal(part["images"], images[[1, 3]]) and part["labels"].tolist() == [1, 3]
    assert part["images"].untyped_storage().nbytes() == 2 * 18  # does not keep the parent alive
    disk = {"root": "r", "paths": [f"p{i}" for i in range(5)], "labels": labels}
    part = subset(disk, idx)
    assert (part["root"], part["paths"], part["labels"].tolist()) == ("r", ["p1", "p3"], [1, 3])
    assert split_length(disk) == 5 and check_split(disk) == "disk"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"images": torch.zeros(2, 1, 4, 4), "labels": torch.zeros(2, dtype=torch.int64)}, "uint8"),
        (
            {
                "images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
                "labels": torch.zeros(3, dtype=torch.int64),
            },
            "2 images but 3 labels",
        ),
        ({"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "labels": torch.zeros(2)}, "int64"),
        (
            {"root": "r", "paths": ["a"], "labels": torch.zeros(2, dtype=torch.int64)},
            "1 paths but 2 labels",
        ),
        ({"labels": torch.zeros(2, dtype=torch.int64), "x": 1}, "must have keys"),
        ([1, 2], "must be a dict"),
    ],
)
def test_malformed_splits_are_refused(split, message):
    with pytest.raises(ValueError, match=message):
        check_split(split)


def test_a_split_digest_changes_with_any_image_label_or_file_but_not_with_the_root():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    split = {"images": images, "labels": torch.tensor([0, 1, 2, 3])}
    digest = split_digest(split)
    assert split_digest({k: v.clone() for k, v in split.items()}) == digest
    other_pixel = images.clone()
    other_pixel[3, 0, 1, 1] = 1
    assert split_digest({**split, "images": other_pixel}) != digest
    assert split_digest({**split, "labels": torch.tensor([0, 1, 3, 2])}) != digest
    assert split_digest(subset(split, torch.tensor([1, 0, 2, 3]))) != digest  # another order
    on_disk = {"root": "/data/a", "paths": ["x.png", "y.png"], "labels": torch.tensor([0, 1])}
    moved = split_digest({**on_disk, "root": "/mnt/b"})
    assert moved == split_digest(on_disk)
    assert split_digest({**on_disk, "paths": ["x.png", "z.png"]}) != moved
