import numpy as np
import pytest
from scipy.stats import binomtest, norm

from dmae_pipeline.smoothing import lower_confidence_bound

GRID = [
    (n_a, n, alpha)
    for n in (1, 2, 10, 100, 1_000, 100_000)
    for n_a in sorted({0, 1, n // 2, n - 1, n})
    for alpha in (0.001, 0.01, 0.05, 0.25, 0.4)
]


@pytest.mark.parametrize(("n_a", "n", "alpha"), GRID)
def test_matches_scipy_clopper_pearson(n_a, n, alpha):
    # the one-sided bound at alpha is the lower end of the two-sided exact interval at 2 alpha
    interval = binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    expected = interval.low
    # scipy finds the bound by root finding, so agreement is to its solver's tolerance
    assert lower_confidence_bound(n_a, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_vectorized_equals_scalar():
    n_a, n, alpha = np.array([g[0] for g in GRID]), np.array([g[1] for g in GRID]), 0.01
    bounds = lower_confidence_bound(n_a, n, alpha)
    assert isinstance(bounds, np.ndarray)
    assert bounds == pytest.approx(
        [lower_confidence_bound(a, b, alpha) for a, b in zip(n_a, n, strict=True)]
    )
    assert isinstance(lower_confidence_bound(3, 10, alpha), float)


def test_edge_values_and_monotonicity():
    assert lower_confidence_bound(0, 50, 0.001) == 0.0
    # all successes: the Beta(n, 1) quantile, alpha ** (1 / n)
    assert lower_confidence_bound(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000))
    bounds = lower_confidence_bound(np.arange(101), 100, 0.05)
    assert np.all(np.diff(bounds) > 0) and bounds[-1] < 1.0
    # a smaller alpha gives a more conservative bound
    assert lower_confidence_bound(70, 100, 0.001) < lower_confidence_bound(70, 100, 0.05)


@pytest.mark.parametrize(("n", "ratio"), [(1_000, 2.46), (10_000, 3.20), (100_000, 3.81)])
def test_largest_certifiable_radius_matches_paper(n, ratio):
    """sigma * Phi^-1(alpha^(1/n)) with alpha = 0.001, in units of sigma (paper-facts section 4)."""
    assert norm.ppf(lower_confidence_bound(n, n, 0.001)) == pytest.approx(ratio, abs=0.005)


@pytest.mark.parametrize(
    ("n_a", "n", "alpha", "match"),
    [
        (5, 0, 0.05, "n >= 1"),
        (0, 0, 0.05, "n >= 1"),  # n_a <= n holds: only the n >= 1 check refuses it
        (-1, 10, 0.05, "0 <= n_a"),
        (11, 10, 0.05, "n_a <= n"),
        (5, 10, 0.0, "alpha"),
        (5, 10, 1.0, "alpha"),
        (5.5, 10, 0.05, "integers"),
    ],
)
def test_rejects_bad_input(n_a, n, alpha, match):
    with pytest.raises(ValueError, match=match):
        lower_confidence_bound(n_a, n, alpha)
