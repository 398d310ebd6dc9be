"""The statistics of CERTIFY / PREDICT against scipy and closed forms."""

import math

import numpy as np
import pytest
from scipy.stats import beta, binom, binomtest, norm

from bench.certify import stats


@pytest.mark.parametrize("k,n", [(1, 1), (1, 10), (5, 10), (99, 100), (950, 1000),
                                 (12345, 100000), (99999, 100000)])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_cp_lower_matches_beta_quantile(k, n, alpha):
    assert stats.cp_lower(k, n, alpha) == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)


@pytest.mark.parametrize("k,n", [(3, 10), (500, 1000), (100000, 100000)])
def test_cp_lower_equals_binomtest_interval(k, n):
    ci = binomtest(k, n, alternative="greater").proportion_ci(confidence_level=0.999)
    assert stats.cp_lower(k, n, 0.001) == pytest.approx(ci.low, abs=1e-12)


def test_cp_lower_edge_cases():
    assert stats.cp_lower(0, 100, 0.001) == 0.0  # scipy's beta.ppf gives NaN here
    for n in (1, 10, 1000, 100000):  # k = n: Beta(n, 1) has CDF p^n
        assert stats.cp_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-12)
    with pytest.raises(ValueError):
        stats.cp_lower(11, 10, 0.001)
    with pytest.raises(ValueError):
        stats.cp_lower(0, 0, 0.001)


def test_cp_lower_exact_coverage_never_exceeds_alpha():
    """max_p P_p(lower bound > p) <= alpha, by summing binomial pmfs over a fine grid of p."""
    alpha, n = 0.01, 200
    bounds = np.array([stats.cp_lower(k, n, alpha) for k in range(n + 1)])
    worst = 0.0
    for p in np.linspace(0.001, 0.999, 2000):
        worst = max(worst, binom.pmf(np.nonzero(bounds > p)[0], n, p).sum())
    assert worst <= alpha + 1e-12
    assert worst > 0.5 * alpha  # and it is not wildly conservative


def test_radius_and_abstain_rule():
    assert stats.certify_decision(3, 40, 100, 0.001, 0.5)[0] == stats.ABSTAIN
    pred, radius, p_lower = stats.certify_decision(3, 100, 100, 0.001, 0.5)
    assert pred == 3 and radius == pytest.approx(0.5 * norm.ppf(p_lower))
    assert stats.radius_from_bound(0.5, 1.0) == 0.0  # exactly 1/2 certifies radius 0
    assert stats.radius_from_bound(0.49, 1.0) == 0.0


@pytest.mark.parametrize("n", [1000, 10000, 100000])
def test_max_radius_table(n):
    expected = {1000: 2.46326, 10000: 3.19858, 100000: 3.81146}[n]  # algorithms.md 2.3
    assert stats.max_radius(1.0, n, 0.001) == pytest.approx(expected, abs=1e-5)
    assert stats.max_radius(0.5, n, 0.001) == pytest.approx(
        0.5 * norm.ppf(stats.cp_lower(n, n, 0.001)), rel=1e-9)


def test_predict_decision():
    assert stats.predict_decision([0, 90, 10], 0.001) == 1
    assert stats.predict_decision([0, 52, 48], 0.001) == stats.ABSTAIN
    assert stats.predict_decision([5, 5], 0.001) == stats.ABSTAIN
    assert stats.predict_decision([0, 0, 0], 0.001) == stats.ABSTAIN


@pytest.mark.parametrize("n1,n2", [(90, 10), (52, 48), (60, 40), (61, 39), (66, 34), (12, 0)])
def test_predict_p_value_against_an_exact_hand_sum(n1, n2):
    """PREDICT's two-sided p-value at p = 1/2, summed from math.comb, and the decision it gives:
    symmetric, so p = 2 * P(Bin(n1 + n2, 1/2) >= n1) (capped at 1) for n1 >= n2."""
    n = n1 + n2
    tail = math.fsum(math.comb(n, j) for j in range(n1, n + 1)) / 2**n
    exact = min(1.0, 2 * tail)
    assert binomtest(n1, n, 0.5).pvalue == pytest.approx(exact, rel=1e-9)
    assert exact == pytest.approx(min(1.0, 2 * binom.sf(n1 - 1, n, 0.5)), rel=1e-9)
    for alpha in (0.001, 0.01, 0.05):
        expected = 1 if exact <= alpha else stats.ABSTAIN
        assert stats.predict_decision([0, n1, n2], alpha) == expected, (alpha, exact)
