"""The anytime-valid test behind sequential CERTIFY (``Smooth.certify_sequential``).

Estimation looks at the counts only at fixed sample counts ``looks`` (n_1 < ... < n_K = n_max),
chosen before sampling from (n_max, alpha, sigma, radii) alone. At look k it computes one-sided
Clopper-Pearson bounds L_k (lower) and U_k (upper) at level ``alpha_look`` = alpha / K' with
K' >= K. Each L_k is a (1 - alpha / K') lower confidence bound on pA from n_k i.i.d. Bernoulli(pA)
draws (pA is the probability of c_hat, fixed by the separate selection samples), so by the union
bound, with probability at least 1 - alpha, L_k <= pA at every look simultaneously. On that event
L_tau <= pA at whatever look tau estimation stops, so the certificate sigma * Phi^-1(L_tau) is
CERTIFY's: the stopping rule, upper bounds included, only decides when to stop and cannot weaken
it. (Recomputing a fixed-n bound at full alpha at every look has no such event: its false
certification rate grows with the number of looks.) The upper bounds spend alpha / K' per look as
well; a wrong one (probability at most alpha in all) only stops estimation before a radius that
holds is proven.

Why this test rather than a betting confidence sequence: with a finite n_max it needs fewer
samples. Its price is ln(K') nats over the fixed-n bound, against 1/2 ln(pi n) for the
Krichevsky-Trofimov (Beta(1/2, 1/2)) mixture martingale, valid at every sample: at alpha =
0.001, sigma = 0.25, n_max = 100,000 and radii 0.25 to 1.0 (K' = 17), all successes prove
radius 0.75 (pA >= Phi(3)) after 7,212 samples here, 8,904 with the mixture and 5,114 for
fixed-n Clopper-Pearson; at n_max its margin below the point estimate is about 1.25 times
fixed-n's. The looks are geometric (``FIRST_LOOK``, times ``LOOK_RATIO``) plus, for each radius,
the first sample count at which all successes would prove it, where most images (pA near 1)
can stop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from dmae_pipeline.smoothing.bounds import check_alpha, lower_confidence_bound

SEQUENTIAL_TEST = "clopper-pearson-union-v1"
"""Names the look schedule and alpha spending of ``SequentialTest``; put it in a certification
log's fingerprint so a sequential log is never resumed under another test."""

FIRST_LOOK = 1000
"""The first geometric look, in estimation samples."""

LOOK_RATIO = 1.5
"""The ratio between successive geometric looks."""


class SequentialTest:
    """When sequential CERTIFY stops, and the bound it reports (see the module docstring).

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
        if isinstance(n_max, bool) or not isinstance(n_max, int | np.integer) or n_max < 1:
            raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
        radii = np.asarray(radii, dtype=float)
        if radii.ndim != 1 or not len(radii) or not np.all(np.isfinite(radii) & (radii >= 0)):
            raise ValueError(f"radii must be a non-empty list of non-negative radii, got {radii}")
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.n_max, self.alpha, self.sigma = int(n_max), check_alpha(alpha), float(sigma)
        self.radii = radii
        geometric = []
        while FIRST_LOOK * LOOK_RATIO ** len(geometric) < self.n_max:
            geometric.append(int(np.ceil(FIRST_LOOK * LOOK_RATIO ** len(geometric))))
        self.alpha_look = self.alpha / (len(geometric) + len(radii) + 1)
        # all n successes give the bound alpha_look ** (1 / n)
        thresholds = norm.cdf(radii / self.sigma)
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
