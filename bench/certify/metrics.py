"""Metrics over a set of certificates (no torch).

Certified accuracy at r counts an image when its prediction is correct and its radius is at
least r (abstentions count as wrong), as in the reference ``analyze.py``; radii are compared at
full precision, never after rounding. ACR is the mean of radius * correct. Two runs on the same
images are compared at :data:`SIGNIFICANCE` with a paired test of the statistic they are
ordered by: McNemar for a certified accuracy (a mean of 0/1 outcomes), the sign-flip
permutation test of the mean difference (:func:`sign_flip_test`) for a mean of graded
per-image values (ACR, the leaderboard's per-image score). A sign test would count images, not
weigh them: a row far ahead on a few images could be "significantly worse" than one slightly
ahead on many, although its mean, which orders the rows, is higher.
"""

from __future__ import annotations

import functools
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
    from scipy.stats import beta  # lazy: scipy.stats takes seconds to import

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
    from scipy.stats import binomtest  # lazy: scipy.stats takes seconds to import

    return float(binomtest(k, n, 0.5).pvalue)


# The sign-flip test is exact (enumeration, or the distribution of an integer sum) where that
# is cheap; otherwise it is Monte Carlo with these fixed draws, so a page is the same every
# time it is built. At p = 0.05, 100,000 draws give a standard error of 0.0007.
EXACT_FLIPS = 16  # nonzero differences up to which all 2^n sign patterns are enumerated
EXACT_SUM_MAX = 1_000_000  # integer differences: exact while sum |d_i| is at most this
PERMUTATION_DRAWS = 100_000
PERMUTATION_SEED = 0


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of rows A and B on the same images: ``wins_a`` images favour A,
    ``wins_b`` favour B (ties dropped), the two-sided p-value, and the mean over images of
    A's value minus B's (the direction of the difference the test is about)."""

    wins_a: int
    wins_b: int
    p_value: float
    mean_difference: float = 0.0

    def significant(self, level: float = SIGNIFICANCE) -> bool:
        return self.p_value < level

    def a_significantly_better(self, level: float = SIGNIFICANCE) -> bool:
        """Significant, and in A's favour: the only result that may put B below A."""
        return self.significant(level) and self.mean_difference > 0


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test of two paired binary outcomes (e.g. certified at r on each image):
    discordant pairs b (A only) and c (B only); p = exact binomial of min(b, c) in b + c."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return PairedTest(only_a, only_b, binomial_two_sided(min(only_a, only_b), only_a + only_b),
                      (only_a - only_b) / len(a) if len(a) else 0.0)


def sign_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Exact sign test of paired values (e.g. per-image radius * correct for ACR): the signs of
    a - b, zero differences dropped, against a fair coin."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    pos = sum(1 for x, y in zip(a, b, strict=True) if x > y)
    neg = sum(1 for x, y in zip(a, b, strict=True) if x < y)
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return PairedTest(pos, neg, binomial_two_sided(min(pos, neg), pos + neg),
                      float(diff.mean()) if diff.size else 0.0)


def sign_flip_test(a: Sequence[float], b: Sequence[float], *,
                   draws: int = PERMUTATION_DRAWS,
                   seed: int = PERMUTATION_SEED) -> PairedTest:
    """Paired sign-flip permutation test of the mean difference of A and B on the same images.

    Under the null each image's difference d_i = a_i - b_i is as likely to have either sign,
    so the two-sided p-value is P(|sum s_i d_i| >= |sum d_i|) over independent fair signs s_i.
    Exact when the differences are integers with sum |d_i| <= :data:`EXACT_SUM_MAX` (the
    distribution of the signed sum by convolution) or when at most :data:`EXACT_FLIPS` are
    nonzero (every pattern enumerated); otherwise Monte Carlo: ``draws`` sign patterns from
    ``seed``, p = (1 + hits) / (1 + draws), which is a valid p-value (never below the exact one
    in expectation). Zero differences are dropped: their signs change nothing.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    nonzero = diff[diff != 0]
    wins_a, wins_b = int(np.sum(nonzero > 0)), int(np.sum(nonzero < 0))
    mean = float(diff.mean()) if diff.size else 0.0
    if nonzero.size == 0:
        return PairedTest(wins_a, wins_b, 1.0, mean)
    if np.all(nonzero == np.round(nonzero)) and np.abs(nonzero).sum() <= EXACT_SUM_MAX:
        p = _flip_p_integer(np.abs(nonzero).astype(np.int64), int(round(nonzero.sum())))
    elif nonzero.size <= EXACT_FLIPS:
        p = _flip_p_enumerated(nonzero)
    else:
        p = _flip_p_monte_carlo_once(nonzero.tobytes(), draws, seed)
    return PairedTest(wins_a, wins_b, min(1.0, p), mean)


@functools.lru_cache(maxsize=1024)
def _flip_p_monte_carlo_once(diff: bytes, draws: int, seed: int) -> float:
    """:func:`_flip_p_monte_carlo`, once per pair of rows: a page's tables and its Markdown
    compare the same rows again."""
    return _flip_p_monte_carlo(np.frombuffer(diff, dtype=float), draws, seed)


def _flip_p_integer(values: np.ndarray, observed: int) -> float:
    """Exact P(|sum s_i v_i| >= |observed|) for positive integers v_i: the signed sum is
    2T - V with T the sum of the v_i given a plus sign; T's law is the convolution, over
    each distinct value v of multiplicity c, of v times a Binomial(c, 1/2)."""
    from scipy.signal import convolve  # lazy: scipy takes seconds to import
    from scipy.stats import binom

    total = int(values.sum())
    law = np.ones(1)
    for v, c in zip(*np.unique(values, return_counts=True), strict=True):
        kernel = np.zeros(int(v) * int(c) + 1)
        kernel[:: int(v)] = binom.pmf(np.arange(c + 1), c, 0.5)
        law = np.clip(convolve(law, kernel), 0.0, None)
    signed = 2 * np.arange(law.size) - total
    return float(law[np.abs(signed) >= abs(observed)].sum())


def _flip_p_enumerated(diff: np.ndarray) -> float:
    """Exact P(|sum s_i d_i| >= |sum d_i|) over all 2^n sign patterns (n small)."""
    n = diff.size
    patterns = (np.arange(1 << n)[:, None] >> np.arange(n)) & 1
    sums = (2 * patterns - 1) @ diff
    return float(np.mean(np.abs(sums) >= _at_least(diff)))


def _flip_p_monte_carlo(diff: np.ndarray, draws: int, seed: int) -> float:
    """(1 + hits) / (1 + draws) over ``draws`` random sign patterns from ``seed``, drawn as
    packed bits in chunks of bounded memory."""
    rng = np.random.default_rng(seed)
    n, width = diff.size, (diff.size + 7) // 8
    chunk = max(1, (1 << 21) // n)
    threshold, total = _at_least(diff), float(diff.sum())
    hits = done = 0
    while done < draws:
        size = min(chunk, draws - done)
        raw = np.frombuffer(rng.bytes(size * width), dtype=np.uint8).reshape(size, width)
        plus = np.unpackbits(raw, axis=1, count=n)  # 1: the sign of d_i is kept
        sums = 2 * (plus @ diff) - total
        hits += int(np.count_nonzero(np.abs(sums) >= threshold))
        done += size
    return (1 + hits) / (1 + draws)


def _at_least(diff: np.ndarray) -> float:
    """|sum d_i|, less a rounding allowance: a pattern whose signed sum equals the observed
    one up to the order of the additions must count as at least as extreme."""
    return abs(float(diff.sum())) - 1e-9 * float(np.abs(diff).sum())
