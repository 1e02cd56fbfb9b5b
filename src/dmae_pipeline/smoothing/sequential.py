"""The anytime-valid test behind sequential CERTIFY (``Smooth.certify_sequential``): when
estimation looks at its counts, when it stops, and the lower bound on pA it reports. Why this test
and what it costs: docs/benchmarks.md, "Sequential certification"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from dmae_pipeline.smoothing.bounds import check_alpha, check_positive_int, lower_confidence_bound

SEQUENTIAL_TEST = "clopper-pearson-union-v1"
"""Names the look schedule and alpha spending of ``SequentialTest``; put it in a certification
log's fingerprint so a sequential log is never resumed under another test."""

FIRST_LOOK = 1000
"""The first geometric look, in estimation samples."""

LOOK_RATIO = 1.5
"""The ratio between successive geometric looks."""


def check_radii(radii: Sequence[float]) -> np.ndarray:
    """``radii`` as a float array, or a ValueError if they are not one or more radii >= 0."""
    radii = np.asarray(radii, dtype=float)
    if radii.ndim != 1 or not len(radii) or not np.all(np.isfinite(radii) & (radii >= 0)):
        raise ValueError(f"radii must be a non-empty list of non-negative radii, got {radii}")
    return radii


class SequentialTest:
    """When sequential CERTIFY stops, and the bound it reports.

    Estimation looks at its counts only at fixed sample counts ``looks`` (n_1 < ... < n_K = n_max),
    chosen from (n_max, alpha, sigma, radii) alone: geometric ones (``FIRST_LOOK``, times
    ``LOOK_RATIO``) and, for each radius, the first count at which all successes would prove it.
    At look k it computes one-sided Clopper-Pearson bounds L_k (lower) and U_k (upper) at level
    ``alpha_look`` = alpha / K' with K' >= K. By the union bound, with probability at least
    1 - alpha, L_k <= pA at every look at once (pA, the probability of c_hat, is fixed by the
    separate selection samples), so L at whatever look estimation stops gives CERTIFY's guarantee:
    the stopping rule, upper bounds included, only decides when to stop. (A fixed-n bound at full
    alpha recomputed at every look has no such event: its false certification rate grows with the
    number of looks.)

    Estimation stops at the first look where, for every radius r, it is settled whether pA >=
    Phi(r / sigma): proven (the lower bound reaches it), disproven (the upper bound is below it)
    or out of reach (all successes up to n_max could not prove it); or at n_max. A pA shown below
    1/2 disproves every radius, so it stops too.

    :param n_max: the most estimation samples
    :param alpha: the failure probability
    :param sigma: the noise level
    :param radii: the radii whose certificates must be settled (non-negative)
    """

    def __init__(self, n_max: int, alpha: float, sigma: float, radii: Sequence[float]):
        self.n_max, self.radii = check_positive_int("n_max", n_max), check_radii(radii)
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.sigma, self.alpha = float(sigma), check_alpha(alpha)
        geometric = []
        while FIRST_LOOK * LOOK_RATIO ** len(geometric) < self.n_max:
            geometric.append(int(np.ceil(FIRST_LOOK * LOOK_RATIO ** len(geometric))))
        self.alpha_look = self.alpha / (len(geometric) + len(self.radii) + 1)
        # all n successes give the bound alpha_look ** (1 / n)
        thresholds = norm.cdf(self.radii / self.sigma)
        all_successes = np.divide(
            np.log(self.alpha_look),
            np.log(thresholds),
            out=np.full_like(thresholds, np.inf),
            where=thresholds < 1,
        )
        first_proofs = {int(np.ceil(n)) for n in all_successes if n < self.n_max}
        self.looks: tuple[int, ...] = tuple(sorted({*geometric, *first_proofs, self.n_max}))

    def lower(self, n_a: ArrayLike, n: ArrayLike) -> float | np.ndarray:
        """The lower bound on pA after ``n_a`` successes in ``n`` samples, ``n`` a look."""
        return lower_confidence_bound(n_a, n, self.alpha_look)

    def upper(self, n_a: ArrayLike, n: ArrayLike) -> float | np.ndarray:
        """The upper bound on pA after ``n_a`` successes in ``n`` samples, ``n`` a look."""
        n_a, n = np.asarray(n_a), np.asarray(n)
        return 1.0 - lower_confidence_bound(n - n_a, n, self.alpha_look)

    def settled(self, n_a: ArrayLike, n: ArrayLike) -> bool | np.ndarray:
        """Whether estimation stops after ``n_a`` successes in ``n`` samples, ``n`` a look."""
        n_a, n = np.asarray(n_a), np.asarray(n)
        proven = self.sigma * norm.ppf(self.lower(n_a, n))
        below = self.sigma * norm.ppf(self.upper(n_a, n))
        reach = self.sigma * norm.ppf(self.lower(n_a + self.n_max - n, self.n_max))
        # r is open while proven < r <= min(below, reach)
        top = np.minimum(below, reach)[..., None]
        open_radii = (proven[..., None] < self.radii) & (self.radii <= top)
        stop = (n >= self.n_max) | ~open_radii.any(axis=-1)
        return bool(stop) if stop.ndim == 0 else stop
