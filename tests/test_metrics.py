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
