"""Metrics over a set of certificates (no torch).

Certified accuracy at r counts an image when its prediction is correct and its radius is at
least r (abstentions count as wrong), as in the reference ``analyze.py``; radii are compared at
full precision, never after rounding. ACR is the mean of radius * correct.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
