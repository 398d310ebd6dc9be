"""Metrics over a set of certificates (no torch).

Certified accuracy at r counts an image when its prediction is correct and its radius is at
least r (abstentions count as wrong), as in the reference ``analyze.py``; radii are compared at
full precision, never after rounding. ACR is the mean of radius * correct.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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
