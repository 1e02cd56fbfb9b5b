"""DataPrepConfig: defaults per source, and bad parameters named before any work starts."""

from __future__ import annotations

import pytest

from dmae_pipeline.data import DataPrepConfig
from dmae_pipeline.data import cifar10 as cifar
from dmae_pipeline.pipelines.data_prep.nodes import prepare_dataset

DIGITS = {"source": "digits", "image_size": 16}


def test_defaults_per_source():
    digits = DataPrepConfig.from_params(DIGITS)
    assert (digits.name, digits.val_fraction, digits.test_fraction, digits.seed) == (
        "digits",
        0.1,
        0.2,
        0,
    )
    cifar10 = DataPrepConfig.from_params({"source": "cifar10"})
    assert (cifar10.image_size, cifar10.test_fraction, cifar10.raw_dir) == (32, None, "data/01_raw")
    assert (cifar10.download, cifar10.url, cifar10.md5) == (False, cifar.URL, cifar.MD5)
    folder = DataPrepConfig.from_params(
        {"source": "imagefolder", "name": "imagenet", "image_size": 224, "test_fraction": None}
    )
    assert (folder.name, folder.image_size, folder.test_fraction) == ("imagenet", 224, None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"source": "mnist"},
            r"data_prep.source must be one of \['digits', 'cifar10', 'imagefolder'\]",
        ),
        ({"image_size": 16}, "data_prep.source must be one of"),
        ({**DIGITS, "image_size": 0}, "data_prep.image_size must be a positive integer, got 0"),
        ({**DIGITS, "image_size": 16.0}, "data_prep.image_size must be a positive integer"),
        ({**DIGITS, "image_size": True}, "data_prep.image_size must be a positive integer"),
        ({"source": "digits"}, "data_prep.image_size is required for source digits"),
        ({"source": "imagefolder"}, "data_prep.image_size is required for source imagefolder"),
        ({"source": "cifar10", "image_size": 64}, "data_prep.image_size must be 32 for cifar10"),
        ({**DIGITS, "val_fraction": 0}, "data_prep.val_fraction must be a number strictly between"),
        ({**DIGITS, "val_fraction": 1.5}, "data_prep.val_fraction must be"),
        ({**DIGITS, "test_fraction": -0.1}, "data_prep.test_fraction must be"),
        ({**DIGITS, "test_fraction": "0.2"}, "data_prep.test_fraction must be"),
        (
            {**DIGITS, "val_fraction": 0.5, "test_fraction": 0.5},
            r"data_prep.val_fraction \+ data_prep.test_fraction = 1 leaves no training data",
        ),
        ({**DIGITS, "seed": "0"}, "data_prep.seed must be an integer"),
        ({**DIGITS, "name": ""}, "data_prep.name must be a non-empty string"),
        (
            {**DIGITS, "raw_dir": "data/01_raw"},
            "data_prep.raw_dir applies only to source cifar10 or",
        ),
        (
            {"source": "cifar10", "test_fraction": 0.2},
            "data_prep.test_fraction applies only to source digits",
        ),
        (
            {"source": "imagefolder", "image_size": 8, "download": True},
            "data_prep.download applies only",
        ),
        ({"source": "cifar10", "download": "yes"}, "data_prep.download must be true or false"),
        ({"source": "cifar10", "url": "file:///etc/passwd"}, "data_prep.url must be an http"),
        ({"source": "cifar10", "md5": "c58f"}, "data_prep.md5 must be 32 hexadecimal digits"),
        ({**DIGITS, "val_fracton": 0.1}, r"data_prep has unknown parameters \['val_fracton'\]"),
        (["digits"], "data_prep must be a mapping"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        DataPrepConfig.from_params(params)


def test_node_checks_parameters_before_reading_anything(tmp_path):
    # The raw folder is missing too, but the bad md5 is reported first: no reading started.
    params = {"source": "cifar10", "raw_dir": str(tmp_path / "missing"), "md5": "xyz"}
    with pytest.raises(ValueError, match=r"data_prep\.md5 must be"):
        prepare_dataset(params)
    with pytest.raises(FileNotFoundError, match=r"missing/cifar-10-python\.tar\.gz"):
        prepare_dataset({**params, "md5": cifar.MD5})
