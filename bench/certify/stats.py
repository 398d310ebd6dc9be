"""The statistics of Cohen et al.'s CERTIFY and PREDICT (no torch, so reports build anywhere).

* ``cp_lower``: the exact one-sided (1 - alpha) Clopper-Pearson lower bound,
  Beta.ppf(alpha; k, n - k + 1), and 0 when k = 0 (where scipy returns NaN).
* ``radius``: sigma * PhiInv(p_lower), or abstain (-1, 0.0) when p_lower < 1/2. A bound of
  exactly 1/2 certifies radius 0 without abstaining, as in the reference code.
* ``predict_decision``: PREDICT's two-sided binomial test of the top two counts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound for k successes in n."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound (1 when k = n)."""
    if k == n:
        return 1.0
    return float(beta.ppf(1 - alpha, k + 1, n - k))


def cp_upper_each(counts, n: int, alpha: float) -> list[float]:
    """:func:`cp_upper` of every count in one vectorized call (the cascade's per-class bounds)."""
    k = np.asarray(counts, dtype=float)
    with np.errstate(invalid="ignore"):
        upper = beta.ppf(1 - alpha, k + 1, n - k)
    return [1.0 if c == n else float(u) for c, u in zip(counts, upper, strict=True)]


def radius_from_bound(p_lower: float, sigma: float) -> float:
    """Cohen's radius sigma * PhiInv(p_lower) for p_lower >= 1/2 (0 at exactly 1/2)."""
    if p_lower < 0.5:
        return 0.0
    return max(0.0, float(sigma * norm.ppf(p_lower)))


def certify_decision(top_class: int, count: int, n: int, alpha: float, sigma: float):
    """(prediction, radius, p_lower) from the estimation count of the selected class.

    Fixed-N Cohen keeps the reference code's rule (``if pABar < 0.5: abstain``): a bound of
    exactly 1/2 predicts with radius 0, so certificates match Cohen et al.'s bit for bit. The
    cascade and sequential procedures need the strict inequality for any claim."""
    p_lower = cp_lower(count, n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0, p_lower
    return top_class, radius_from_bound(p_lower, sigma), p_lower


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest certifiable radius, sigma * PhiInv(alpha^(1/n)), reached when all n agree.

    Computed as PhiInv's upper tail of 1 - alpha^(1/n) via expm1 to stay exact for large n.
    """
    return float(sigma * norm.isf(-math.expm1(math.log(alpha) / n)))


def predict_decision(counts, alpha: float) -> int:
    """PREDICT: the top class if a two-sided binomial test of n1 vs n2 rejects p = 1/2 at alpha."""
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
    c1 = order[0]
    n1 = int(counts[c1])
    n2 = int(counts[order[1]]) if len(order) > 1 else 0
    if n1 + n2 == 0:
        return ABSTAIN
    if binomtest(n1, n1 + n2, p=0.5).pvalue > alpha:
        return ABSTAIN
    return c1
