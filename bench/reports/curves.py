"""Certified accuracy as an exact step curve of the radius, from per-image radii.

Certified accuracy at r is the fraction of images that are correct with radius >= r: a step
function, constant between consecutive image radii, that drops just after each of them (an
image with radius R still counts at r = R). Joining
grid points with straight lines (0.25 apart) invents values between them; Cohen et al.'s
``analyze.py`` plots the steps. Both the ``plot`` command and the leaderboard's SVG use this.
No torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def step_curve(images: Iterable[tuple[float, int]], *, total: int | None = None,
               until: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (radii, accuracy) of the step curve of ``images`` ((radius, correct) pairs).

    The curve starts at r = 0 with the fraction correct at radius >= 0, stays flat up to each
    distinct radius R of a correct image and drops just after it (the vertex pair (R, a),
    (R, a') draws the vertical drop); ``until`` extends the last level to that radius
    (e.g. the run's maximum certifiable radius). ``total`` is the denominator (default: the
    number of images), so a curve over a partial run is still a fraction of the subset.
    """
    pairs = [(float(r), int(c)) for r, c in images]
    count = total if total is not None else len(pairs)
    if count <= 0:
        return np.zeros(0), np.zeros(0)
    radii = np.sort(np.array([r for r, c in pairs if c and r >= 0], dtype=float))
    xs, ys = [0.0], [len(radii) / count]
    left = len(radii)
    for value in np.unique(radii):
        at = int(np.searchsorted(radii, value, side="right") - np.searchsorted(radii, value))
        xs.append(float(value))
        ys.append(left / count)
        left -= at
        xs.append(float(value))
        ys.append(left / count)
    end = max(xs[-1], until if until is not None else xs[-1])
    if end > xs[-1]:
        xs.append(end)
        ys.append(ys[-1])
    return np.asarray(xs), np.asarray(ys)

