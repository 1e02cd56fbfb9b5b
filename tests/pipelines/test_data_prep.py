"""`kedro run --pipelines=data_prep` in a temporary copy of the project."""

from __future__ import annotations

import json

import pytest
import torch
from kedro.validation.exceptions import DataValidationError, ParameterValidationError
from PIL import Image

from conftest import run_kedro
from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load

pytestmark = pytest.mark.slow

OUTPUTS = ("dataset_spec.json", "train.pt", "val.pt", "test.pt")


def load_outputs(project):
    folder = project / "data" / "05_model_input"
    spec = json.loads((folder / "dataset_spec.json").read_text())
    splits = {name: safe_torch_load(folder / f"{name}.pt") for name in ("train", "val", "test")}
    return spec, splits


def test_digits_in_the_test_env(kedro_project):
    run_kedro(kedro_project, "data_prep", "test")
    spec, splits = load_outputs(kedro_project)
    assert spec["source"] == "digits" and spec["image_size"] == 16 and spec["channels"] == 1
    assert spec["class_names"] == [str(d) for d in range(10)] and spec["num_classes"] == 10
    assert spec["split_sizes"] == {"train": 1258, "val": 180, "test": 359}
    assert len(spec["mean"]) == len(spec["std"]) == 1 and 0 < spec["mean"][0] < 1
    for name, split in splits.items():
        n = spec["split_sizes"][name]
        assert split["images"].shape == (n, 1, 16, 16) and split["images"].dtype == torch.uint8
        assert split["labels"].shape == (n,) and split["labels"].dtype == torch.int64
    images, label = SplitDataset(splits["val"], build_transform(spec, train=False))[0]
    assert images.shape == (1, 16, 16) and 0 <= label < 10


def test_image_folder_through_the_catalog(kedro_project, tmp_path):
    root = tmp_path / "images"
    for part, n in (("train", 5), ("val", 2)):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                ext = "png" if i % 2 else "jpg"
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / part / cls / f"{i}.{ext}")
    params = {
        "data_prep": {
            "source": "imagefolder",
            "image_size": 24,
            "raw_dir": str(root),
            "test_fraction": None,
            "val_fraction": 0.2,
        }
    }
    run_kedro(kedro_project, "data_prep", "test", params=params)
    spec, splits = load_outputs(kedro_project)
    assert spec["split_sizes"] == {"train": 8, "val": 2, "test": 4}
    assert splits["test"]["root"] == str(root)
    assert splits["test"]["paths"] == ["val/a/0.jpg", "val/a/1.png", "val/b/0.jpg", "val/b/1.png"]
    image, label = SplitDataset(splits["train"], build_transform(spec, train=False))[0]
    assert image.shape == (3, 24, 24) and label == 0


def test_bad_parameters_stop_the_run_and_write_nothing(kedro_project):
    with pytest.raises(
        ParameterValidationError, match=r"data_prep\.val_fraction: val_fraction \+ test_fraction"
    ):
        run_kedro(kedro_project, "data_prep", "test", params={"data_prep": {"val_fraction": 0.9}})
    assert not any((kedro_project / "data" / "05_model_input" / name).exists() for name in OUTPUTS)


@pytest.mark.parametrize(
    ("content", "message"),
    [("[]", "Input should be a valid dictionary"), ("{}", "num_classes: Field required")],
)
def test_a_malformed_dataset_spec_is_named_before_any_training(kedro_project, content, message):
    spec = kedro_project / "data/05_model_input/dataset_spec.json"
    spec.write_text(content)
    with pytest.raises(DataValidationError) as refused:
        run_kedro(kedro_project, "pretrain", "test")
    assert "dataset_spec.json is not a dataset spec" in str(refused.value)
    assert message in str(refused.value) and "run the data_prep pipeline" in str(refused.value)
    written = (kedro_project / "data/06_models").rglob("*")
    assert [p.name for p in written if p.is_file() and p.suffix != ".lock"] == [".gitkeep"]
