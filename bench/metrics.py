"""Metrics over a set of certificates (no torch).

Certified accuracy at r counts an image when its prediction is correct and its radius is at
least r (abstentions count as wrong), as in the reference ``analyze.py``; radii are compared at
full precision, never after rounding. ACR is the mean of radius * correct. Two runs on the same
images are compared with exact paired tests (McNemar, sign test) at :data:`SIGNIFICANCE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def certified_accuracy(
    radii: Sequence[float], correct: Sequence[int], grid: Iterable[float]
) -> dict[float, float]:
    """Fraction of images that are correct with radius >= r, for each r of the grid."""
    radii_a = np.asarray(radii, dtype=float)
    correct_a = np.asarray(correct, dtype=bool)
    if radii_a.size == 0:
        return {float(r): float("nan") for r in grid}
    return {float(r): float(np.mean(correct_a & (radii_a >= r))) for r in grid}


def average_certified_radius(radii: Sequence[float], correct: Sequence[int]) -> float:
    """ACR: mean over images of radius * 1[correct] (0 for abstentions and wrong classes)."""
    radii_a = np.asarray(radii, dtype=float)
    if radii_a.size == 0:
        return float("nan")
    return float(np.mean(radii_a * np.asarray(correct, dtype=bool)))


def abstain_rate(predictions: Sequence[int]) -> float:
    """Fraction of images where the smoothed classifier abstained (prediction -1)."""
    pred = np.asarray(predictions)
    if pred.size == 0:
        return float("nan")
    return float(np.mean(pred == -1))


def certified_count(radii: Sequence[float], correct: Sequence[int], r: float) -> int:
    """Number of images correct with radius >= r (the numerator of certified accuracy)."""
    radii_a = np.asarray(radii, dtype=float)
    return int(np.sum(np.asarray(correct, dtype=bool) & (radii_a >= r)))


def sample_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for k of n images.

    This is the uncertainty from *which* images were certified (the sample of the test set),
    not the per-image alpha of the certificates: a 500-image difference of 2 points is noise.
    """
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def envelope(curves: Iterable[Mapping[float, float]]) -> dict[float, float]:
    """Best value per radius over several curves (the papers' best-over-sigma row).

    A radius missing from a curve does not count for it; NaN values are ignored.
    """
    best: dict[float, float] = {}
    for curve in curves:
        for r, v in curve.items():
            if v is None or v != v:  # NaN
                continue
            if r not in best or v > best[r]:
                best[r] = v
    return dict(sorted(best.items()))


# ----- paired exact tests (rows certified on the same images) ------------------------------------
SIGNIFICANCE = 0.05  # two-sided level of the paired tests behind tie marks and shared ranks


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at probability 1/2 (scipy's
    ``binomtest``); 1.0 when n is 0 (no discordant pair: nothing to tell the rows apart)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(k, n, 0.5).pvalue)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of rows A and B on the same images: ``wins_a`` images favour A,
    ``wins_b`` favour B (ties dropped), and the exact two-sided p-value."""

    wins_a: int
    wins_b: int
    p_value: float

    def significant(self, level: float = SIGNIFICANCE) -> bool:
        return self.p_value < level


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test of two paired binary outcomes (e.g. certified at r on each image):
    discordant pairs b (A only) and c (B only); p = exact binomial of min(b, c) in b + c."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return PairedTest(only_a, only_b, binomial_two_sided(min(only_a, only_b), only_a + only_b))


def sign_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Exact sign test of paired values (e.g. per-image radius * correct for ACR): the signs of
    a - b, zero differences dropped, against a fair coin."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    pos = sum(1 for x, y in zip(a, b, strict=True) if x > y)
    neg = sum(1 for x, y in zip(a, b, strict=True) if x < y)
    return PairedTest(pos, neg, binomial_two_sided(min(pos, neg), pos + neg))
