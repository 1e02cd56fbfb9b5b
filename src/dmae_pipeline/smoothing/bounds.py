"""Binomial confidence bounds used by CERTIFY, and the checks of their arguments."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta


def check_positive_int(name: str, value: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or a ValueError if it is not a probability in (0, 1)."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def lower_confidence_bound(n_a: ArrayLike, n: ArrayLike, alpha: float) -> float | np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    Equals the lower end of the two-sided (1 - 2 alpha) Clopper-Pearson interval, i.e. Cohen et
    al.'s ``proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]``; 0 when ``n_a`` is 0.

    :param n_a: the number of successes (an int or an array of ints)
    :param n: the number of draws (an int or an array of ints broadcastable with ``n_a``)
    :param alpha: the failure probability
    :return: a lower bound on the success probability that holds with probability at least
             1 - alpha over the draws; a float for scalar inputs, else an array
    """
    alpha = check_alpha(alpha)
    n_a_arr, n_arr = np.broadcast_arrays(np.asarray(n_a), np.asarray(n))
    if not (np.issubdtype(n_a_arr.dtype, np.integer) and np.issubdtype(n_arr.dtype, np.integer)):
        raise ValueError(f"n_a and n must be integers, got {n_a!r} and {n!r}")
    if np.any(n_arr < 1) or np.any(n_a_arr < 0) or np.any(n_a_arr > n_arr):
        raise ValueError(f"expected 0 <= n_a <= n and n >= 1, got n_a={n_a!r}, n={n!r}")
    successes = np.maximum(n_a_arr, 1)  # beta.ppf needs a > 0; n_a == 0 is masked below
    bound = np.where(n_a_arr == 0, 0.0, beta.ppf(alpha, successes, n_arr - n_a_arr + 1))
    return float(bound) if bound.ndim == 0 else bound
