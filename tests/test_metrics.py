"""Metrics on hand-made certificate sets."""

import math

import pytest

from bench.certify import metrics


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


# ----- the sign-flip permutation test of the mean difference -----------------------------------
def _brute_flip_p(diff):
    """P(|sum s_i d_i| >= |sum d_i|) over all 2^n sign patterns, by itertools."""
    import itertools

    observed = abs(sum(diff))
    hits = sum(abs(sum(s * d for s, d in zip(signs, diff, strict=True))) >= observed - 1e-9
               for signs in itertools.product((1, -1), repeat=len(diff)))
    return hits / 2 ** len(diff)


@pytest.mark.parametrize("diff", [[3, -1, 2, 2, -5, 1, 1, 4, -2, 1], [1, 1, 1, 1, 1],
                                  [2, -2], [7, -1, -1, -1, -1, -1, -1, -1]])
def test_sign_flip_exact_paths_match_brute_force(diff):
    import numpy as np

    exact = _brute_flip_p(diff)
    assert metrics.sign_flip_test(diff, [0] * len(diff)).p_value == pytest.approx(exact)
    assert metrics._flip_p_enumerated(np.asarray(diff, float)) == pytest.approx(exact)
    floats = [d * 0.37 for d in diff]  # not integers: the enumeration path
    assert metrics.sign_flip_test(floats, [0] * len(diff)).p_value == pytest.approx(exact)


def test_sign_flip_monte_carlo_is_seeded_and_close_to_the_exact_value():
    import numpy as np

    diff = np.array([3, -1, 2, 2, -5, 1, 1, 4, -2, 1] * 4, dtype=float)  # 40 nonzero
    exact = metrics._flip_p_integer(np.abs(diff).astype(np.int64), int(diff.sum()))
    mc = metrics._flip_p_monte_carlo(diff, metrics.PERMUTATION_DRAWS, metrics.PERMUTATION_SEED)
    assert mc == metrics._flip_p_monte_carlo(diff, metrics.PERMUTATION_DRAWS, 0)  # same page
    assert abs(mc - exact) < 0.005 and 0.01 < exact < 0.99
    radii = diff * 0.1234  # floats with 40 nonzero differences: the Monte-Carlo path
    assert metrics.sign_flip_test(radii, [0.0] * 40).p_value == pytest.approx(exact, abs=0.005)


def test_sign_flip_tests_the_mean_where_the_sign_test_counts_images():
    """The issue's scenario on per-image grid scores (5 grid radii): A certified at r = 1.2 on
    images 0-19 (score 5), B at r = 0.2 on images 20-79 (score 1). A's mean is higher (1.0 vs
    0.6); B wins on 60 images to 20. By hand: S = 5 (2X - 20) + (2Y - 60), X ~ Bin(20, 1/2),
    Y ~ Bin(60, 1/2) independent, p = P(|S| >= 40)."""
    from scipy.stats import binom

    a = [5] * 20 + [0] * 80
    b = [0] * 20 + [1] * 60 + [0] * 20
    by_hand = sum(binom.pmf(x, 20, 0.5) * binom.pmf(y, 60, 0.5) for x in range(21)
                  for y in range(61) if abs(5 * (2 * x - 20) + 2 * y - 60) >= 40)
    t = metrics.sign_flip_test(a, b)
    assert t.p_value == pytest.approx(by_hand, rel=1e-9) and t.p_value == pytest.approx(0.0996,
                                                                                       abs=1e-4)
    assert (t.wins_a, t.wins_b) == (20, 60) and t.mean_difference == pytest.approx(0.4)
    assert not t.a_significantly_better()
    sign = metrics.sign_test(a, b)  # what ranked them before: "B significantly worse"
    assert sign.p_value == pytest.approx(8.6e-6, rel=0.01) and sign.significant()
    reverse = metrics.sign_flip_test(b, a)
    assert reverse.p_value == t.p_value and reverse.mean_difference == pytest.approx(-0.4)
    assert metrics.sign_flip_test([0.2] * 4, [0.2] * 4).p_value == 1.0


def test_a_significant_difference_has_a_direction():
    t = metrics.sign_flip_test([1.0] * 7, [0.5] * 7)
    assert t.p_value == pytest.approx(2 / 128) and t.a_significantly_better()
    back = metrics.sign_flip_test([0.5] * 7, [1.0] * 7)
    assert back.significant() and not back.a_significantly_better()
    assert not metrics.mcnemar([0] * 8, [1] * 8).a_significantly_better()
    assert metrics.mcnemar([1] * 8, [0] * 8).a_significantly_better()
