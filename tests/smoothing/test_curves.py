import numpy as np
import pytest

from dmae_pipeline.smoothing import average_certified_radius, best_over_sigma, certified_accuracy

RADII = [0.0, 0.3, 0.6, 1.2, 0.0, 0.5]
CORRECT = [1, 1, 0, 1, 0, 1]  # image 2 certified but wrong; image 4 abstained


def test_certified_accuracy_by_hand():
    curve = certified_accuracy(RADII, CORRECT, [0.0, 0.25, 0.5, 1.0, 1.5])
    # r=0: images 0,1,3,5; r=0.25: 1,3,5; r=0.5: 3,5 (radius == r counts); r=1: 3; r=1.5: none
    np.testing.assert_allclose(curve, [4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])


def test_certified_accuracy_accepts_booleans_and_rejects_other_values():
    curve = certified_accuracy(RADII, np.array(CORRECT, dtype=bool), [0.5])
    np.testing.assert_allclose(curve, [2 / 6])
    with pytest.raises(ValueError, match="correct"):
        certified_accuracy(RADII, [1, 1, 2, 1, 0, 1], [0.5])
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy(RADII, CORRECT[:-1], [0.5])
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy([], [], [0.5])


def test_average_certified_radius_by_hand():
    # wrong predictions count 0: (0 + 0.3 + 1.2 + 0.5) / 6
    assert average_certified_radius(RADII, CORRECT) == pytest.approx(2.0 / 6)


def test_best_over_sigma_is_the_pointwise_maximum():
    curves = {0.25: [0.8, 0.5, 0.1, 0.0], 0.5: [0.7, 0.6, 0.3, 0.1], 1.0: [0.5, 0.4, 0.35, 0.2]}
    np.testing.assert_allclose(best_over_sigma(curves), [0.8, 0.6, 0.35, 0.2])
    np.testing.assert_allclose(best_over_sigma(list(curves.values())), [0.8, 0.6, 0.35, 0.2])
    with pytest.raises(ValueError, match="same length"):
        best_over_sigma([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="same length"):
        best_over_sigma({})
