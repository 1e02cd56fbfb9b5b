"""Certified-accuracy curves, average certified radius and the best-over-sigma envelope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike


def _radii_and_correct(radii: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    radii = np.asarray(radii, dtype=float)
    correct = np.asarray(correct)
    if radii.ndim != 1 or radii.shape != correct.shape or len(radii) == 0:
        raise ValueError(
            "radii and correct must be non-empty 1-D arrays of the same length, got shapes "
            f"{radii.shape} and {correct.shape}"
        )
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must hold only 0/1 or booleans")
    return radii, correct.astype(bool)


def certified_accuracy(radii: ArrayLike, correct: ArrayLike, thresholds: ArrayLike) -> np.ndarray:
    """Certified accuracy at each threshold r: the fraction of images whose prediction is correct
    and whose certified radius is at least r (abstentions have radius 0 and are never correct).

    :param radii: certified radius per image
    :param correct: 1/True where the (certified) prediction equals the label, per image
    :param thresholds: the radii r at which to evaluate the curve
    :return: an array of fractions, one per threshold
    """
    radii, correct = _radii_and_correct(radii, correct)
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.ndim != 1:
        raise ValueError(f"thresholds must be a 1-D array of radii, got shape {thresholds.shape}")
    return (correct[None, :] & (radii[None, :] >= thresholds[:, None])).mean(axis=1)


def average_certified_radius(radii: ArrayLike, correct: ArrayLike) -> float:
    """ACR: the mean over all images of the certified radius, counting 0 for wrong predictions."""
    radii, correct = _radii_and_correct(radii, correct)
    return float(np.mean(radii * correct))


def best_over_sigma(curves: Mapping[object, ArrayLike] | Sequence[ArrayLike]) -> np.ndarray:
    """The envelope of certified-accuracy curves: at each threshold, the best over the noise levels.

    :param curves: one curve per sigma (a mapping sigma -> curve, or a sequence of curves), all
                   evaluated at the same thresholds
    :return: the pointwise maximum
    """
    values = list(curves.values()) if isinstance(curves, Mapping) else list(curves)
    arrays = [np.asarray(curve, dtype=float) for curve in values]
    if not arrays or any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError("curves must be one or more 1-D curves of the same length")
    return np.max(np.stack(arrays), axis=0)
