"""SmoothedClassifier: the same certificates as Smooth, image by image, and every bad input or
setting refused with what is wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from dmae_pipeline.models import load_classifier
from dmae_pipeline.serving import COLUMNS, SmoothedClassifier
from dmae_pipeline.serving.pyfunc import request_settings
from dmae_pipeline.smoothing import CertifySettings, Smooth

from .tiny import DEFAULTS, LIMITS, RADII, SIGMA, SPEC, images, tiny_checkpoint

SEQUENTIAL = dataclasses.replace(DEFAULTS, radii=RADII, n=400)


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def classifier(checkpoint) -> SmoothedClassifier:
    return SmoothedClassifier.from_checkpoint(checkpoint, SPEC)


def smooth(checkpoint, seed: int | None = None) -> Smooth:
    model = load_classifier(checkpoint, "tiny")
    return Smooth(model, 10, SIGMA, seed=seed)


@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_one_image_is_certified_as_smooth_certify_with_that_seed_bit_for_bit(
    classifier, checkpoint, seed
):
    x = images(1, seed=3)
    settings = dataclasses.replace(DEFAULTS, seed=seed)
    row = classifier.certify(x, settings).iloc[0]
    s = DEFAULTS
    prediction, radius = smooth(checkpoint, seed).certify(
        torch.from_numpy(x[0]), s.n0, s.n, s.alpha, s.batch_size
    )
    detailed = smooth(checkpoint, seed).certify_detailed(
        torch.from_numpy(x[0]), s.n0, s.n, s.alpha, s.batch_size
    )
    assert (row["prediction"], row["radius"]) == (prediction, radius)
    assert (row["p_a_lower"], row["n"], row["sigma"]) == (detailed.p_a_lower, s.n, SIGMA)


def test_sequential_mode_is_certify_sequential_with_that_seed_bit_for_bit(classifier, checkpoint):
    x = images(1, seed=4)
    row = classifier.certify(x, dataclasses.replace(SEQUENTIAL, seed=11)).iloc[0]
    s = SEQUENTIAL
    generator = torch.Generator().manual_seed(11)
    expected = smooth(checkpoint).certify_sequential(
        torch.from_numpy(x[0]), s.n0, s.n, s.alpha, s.batch_size, s.radii, generator
    )
    assert row[["prediction", "radius", "p_a_lower", "n"]].tolist() == [
        expected.prediction,
        expected.radius,
        expected.p_a_lower,
        expected.n,
    ]
    assert 0 < row["n"] < s.n  # stopped early: the test above is not fixed-n's


@pytest.mark.parametrize("settings", [DEFAULTS, SEQUENTIAL], ids=["fixed", "sequential"])
def test_a_batch_answers_as_single_images_seeded_seed_plus_their_index(classifier, settings):
    x = images(5, seed=5)
    batch = classifier.certify(x, dataclasses.replace(settings, seed=100))
    singles = pd.concat(
        [
            classifier.certify(x[i : i + 1], dataclasses.replace(settings, seed=100 + i))
            for i in range(len(x))
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(batch, singles, check_exact=True)
    # not vacuous: one seed for every image (or another seed) gives other answers
    same_seed = pd.concat(
        [
            classifier.certify(x[i : i + 1], dataclasses.replace(settings, seed=100))
            for i in range(5)
        ]
    )
    assert not np.array_equal(same_seed["p_a_lower"].to_numpy(), batch["p_a_lower"].to_numpy())
    other = classifier.certify(x, dataclasses.replace(settings, seed=101))
    assert not np.array_equal(other["p_a_lower"].to_numpy(), batch["p_a_lower"].to_numpy())


def test_rows_name_their_class_and_abstain_without_a_name(classifier):
    rows = classifier.certify(images(3), DEFAULTS)
    assert list(rows.columns) == COLUMNS
    certified = rows[rows["prediction"] >= 0]
    assert len(certified)
    assert certified["class_name"].tolist() == [str(p) for p in certified["prediction"]]
    # five samples cannot prove p_A > 1/2 at alpha 0.001: every image abstains
    abstained = classifier.certify(images(3), dataclasses.replace(DEFAULTS, n=5))
    assert abstained["prediction"].tolist() == [-1, -1, -1]
    assert abstained["radius"].tolist() == [0.0, 0.0, 0.0]
    assert abstained["class_name"].tolist() == ["", "", ""]


def with_pixel(value: float) -> np.ndarray:
    x = images(3)
    x[:, 0, 0, 0] = 0.0
    x[1, 0, 4, 5] = value
    return x


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            images(2)[:, :, :8],
            "expected N x 1 x 16 x 16 float32 pixels in [0, 1], got shape (2, 1, 8, 16)",
        ),
        (images(2)[0], "got shape (1, 16, 16)"),
        (images(2).repeat(3, axis=1), "got shape (2, 3, 16, 16)"),
        (images(0), "got shape (0, 1, 16, 16)"),
        ((images(2) * 255).astype(np.uint8), "got dtype uint8"),
        (images(2).tolist(), "got list"),
        (with_pixel(np.nan), "NaN or infinite pixels in image(s) [1]"),
        (with_pixel(np.inf), "NaN or infinite pixels in image(s) [1]"),
        (with_pixel(-np.inf), "NaN or infinite pixels in image(s) [1]"),
        (with_pixel(1.5), "pixels must be in [0, 1], got values in [0, 1.5] in image(s) [1]"),
        (with_pixel(-0.01), "in image(s) [1]"),
    ],
)
def test_bad_images_are_refused_with_what_is_expected(classifier, bad, message):
    with pytest.raises(ValueError) as refused:
        classifier.certify(bad, DEFAULTS)
    assert message in str(refused.value)


def test_float64_images_in_range_are_certified_as_float32(classifier):
    x = images(2)
    pd.testing.assert_frame_equal(
        classifier.certify(x.astype(np.float64), DEFAULTS), classifier.certify(x, DEFAULTS)
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n": 0}, "n must be a positive integer, got 0"),
        ({"n0": -1}, "n0 must be a positive integer, got -1"),
        ({"n": True}, "n must be a positive integer, got True"),
        ({"alpha": 1.0}, "alpha must be in (0, 1), got 1.0"),
        ({"alpha": 0}, "alpha must be in (0, 1), got 0"),
        ({"mode": "adaptive"}, "mode: expected 'fixed' or 'sequential', got 'adaptive'"),
        (
            {"mode": "sequential", "radii": [0.5, -0.25]},
            "radii must be a non-empty list of non-negative radii",
        ),
        ({"mode": "sequential", "radii": []}, "radii must be a non-empty list"),
        ({"seed": -1}, "seed must be an integer in [0, 2^64), got -1"),
        ({"seed": 2**64}, f"seed must be an integer in [0, 2^64), got {2**64}"),
    ],
)
def test_bad_request_parameters_are_refused_naming_the_parameter(params, message):
    with pytest.raises(ValueError) as refused:
        request_settings(DEFAULTS, RADII, params)
    assert str(refused.value).startswith(message)


def test_a_request_overrides_the_defaults_it_names():
    given = {"n": 200, "mode": "sequential", "radii": [0.5], "seed": 3, "batch_size": 1}
    settings = request_settings(DEFAULTS, RADII, given)
    assert settings == CertifySettings(
        n0=DEFAULTS.n0, n=200, alpha=DEFAULTS.alpha, batch_size=DEFAULTS.batch_size,
        radii=(0.5,), seed=3,
    )  # fmt: skip
    assert request_settings(DEFAULTS, RADII, None) == DEFAULTS
    # sequential without radii settles the model's; fixed drops sequential defaults' radii
    assert request_settings(DEFAULTS, RADII, {"mode": "sequential"}) == SEQUENTIAL_AT_100
    assert request_settings(SEQUENTIAL_AT_100, (), {"mode": "fixed"}) == DEFAULTS
    assert request_settings(SEQUENTIAL_AT_100, RADII, {"n": 400}) == SEQUENTIAL


SEQUENTIAL_AT_100 = dataclasses.replace(SEQUENTIAL, n=DEFAULTS.n)


@pytest.mark.parametrize(
    "change, count, message",
    [
        ({"n": LIMITS.max_n + 1}, 1, f"n={LIMITS.max_n + 1} exceeds this model's limit max_n=1000"),
        ({"n0": 5000}, 1, "n0=5000 exceeds this model's limit max_n=1000"),
        ({}, LIMITS.max_images + 1, "9 images exceed this model's limit max_images=8"),
    ],
)
def test_limits_name_the_limit_a_request_exceeds(change, count, message):
    LIMITS.check(dataclasses.replace(DEFAULTS, n=LIMITS.max_n), LIMITS.max_images)  # at the limit
    with pytest.raises(ValueError, match=message):
        LIMITS.check(dataclasses.replace(DEFAULTS, **change), count)
