"""Metrics on hand-made certificate sets."""

import math

import pytest

from bench import metrics


def test_certified_accuracy_hand_made():
    radii = [0.0, 0.3, 0.25, 0.9, 0.0, 0.2496]
    correct = [1, 1, 0, 1, 0, 1]  # the 4th wrong-class image with a radius does not count
    ca = metrics.certified_accuracy(radii, correct, [0.0, 0.25, 0.5, 1.0])
    assert ca == {0.0: pytest.approx(4 / 6), 0.25: pytest.approx(2 / 6),
                  0.5: pytest.approx(1 / 6), 1.0: 0.0}
    # 0.2496 is never rounded up across the 0.25 threshold


def test_acr_and_abstain():
    assert metrics.average_certified_radius([0.5, 1.0, 2.0], [1, 0, 1]) == pytest.approx(2.5 / 3)
    assert metrics.abstain_rate([-1, 3, -1, 2]) == 0.5
    assert math.isnan(metrics.average_certified_radius([], []))


# ----- paired exact tests --------------------------------------------------------------------
def _comb_p(k, n):
    """Two-sided exact binomial p at 1/2 by hand: 2 * P(X <= min(k, n - k)), capped at 1."""
    low = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 5), (1, 6), (2, 10), (5, 10), (20, 70), (3, 3),
                                 (0, 0), (7, 25), (12, 13)])
def test_binomial_two_sided_matches_scipy_and_the_comb_sum(k, n):
    from scipy.stats import binomtest

    p = metrics.binomial_two_sided(k, n)
    assert p == pytest.approx(_comb_p(k, n) if n else 1.0, rel=1e-12)
    if n:
        assert p == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_binomial_values_by_hand():
    assert metrics.binomial_two_sided(1, 6) == pytest.approx(14 / 64)  # 2 * (1 + 6) / 64
    assert metrics.binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert metrics.binomial_two_sided(0, 1) == 1.0  # one discordant pair says nothing
    assert metrics.binomial_two_sided(3, 6) == 1.0
    with pytest.raises(ValueError):
        metrics.binomial_two_sided(4, 3)


def test_mcnemar_counts_discordant_pairs_only():
    # 10 images: both certified on 3, A only on 5, B only on 1, neither on 1.
    a = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    b = [1, 1, 1, 0, 0, 0, 0, 0, 1, 0]
    t = metrics.mcnemar(a, b)
    assert (t.wins_a, t.wins_b) == (5, 1)
    assert t.p_value == pytest.approx(14 / 64) and not t.significant()
    # 100.0 vs 90.0 on ten images: one discordant pair, p = 1.
    assert metrics.mcnemar([1] * 10, [1] * 9 + [0]).p_value == 1.0
    # 50 against 20 discordant pairs (plus 30 concordant): p = binomtest(20, 70) ~ 0.00044.
    a = [1] * 50 + [0] * 20 + [1] * 10 + [0] * 20
    b = [0] * 50 + [1] * 20 + [1] * 10 + [0] * 20
    t = metrics.mcnemar(a, b)
    assert (t.wins_a, t.wins_b) == (50, 20)
    assert t.p_value == pytest.approx(_comb_p(20, 70)) and t.significant()
    assert t.p_value == pytest.approx(0.000440, rel=0.01)
    with pytest.raises(ValueError):
        metrics.mcnemar([1], [1, 0])


def test_sign_test_drops_ties():
    a = [0.5, 0.4, 0.0, 0.3, 0.0, 0.9, 0.2]
    b = [0.1, 0.4, 0.0, 0.1, 0.2, 0.1, 0.1]  # two ties, A higher on 4, B higher on 1
    t = metrics.sign_test(a, b)
    assert (t.wins_a, t.wins_b) == (4, 1)
    assert t.p_value == pytest.approx(_comb_p(1, 5)) == pytest.approx(12 / 32)
    t = metrics.sign_test([1.0] * 7, [0.5] * 7)
    assert t.p_value == pytest.approx(2 / 128) and t.significant()
    assert metrics.sign_test([0.2] * 4, [0.2] * 4).p_value == 1.0
