"""Group-sequential Clopper-Pearson grid certification ("GS-CP", efficiency.md §1.4-1.6).

Two rules (``ProcedureSpec.sequential_rule``), one bound: a union of one-sided Clopper-Pearson
bounds over the looks. ``gs-cp`` (version 1) is the spec's six looks (ratio 4, last 1.2 N,
alpha/2 on the last) with futility at level ``alpha_f`` against the next threshold itself.
``fine-cp`` looks every x1.1 (from 100, last look N: never more samples than fixed N), spends
0.8 alpha on the last look and 0.2 alpha evenly over the others, and stops for futility when
the CONDITIONAL POWER of the last look's test of the next level, at the optimistic p of a CP
upper bound at ``alpha_f``, is below ``futility_power``: images that the last look will not
certify stop early even when their p sits right on a threshold (they ran to the end before).

Selection is Cohen's (N0 samples of phase 0, argmax). Estimation counts the selected class on
ONE cumulative stream (phase 1, Cohen's estimation stream) and looks at it at checkpoints
n_1 < ... < n_J. At checkpoint j the one-sided Clopper-Pearson bound lb_j is taken at level
alpha_j; the certified grid level is the largest i with max_j lb_j > p_i = Phi(r_i / sigma),
strictly: a bound equal to a threshold does not claim its radius (level 0 is radius 0,
p_0 = 1/2: certified when lb > 1/2, where Cohen's reference rule also certifies lb = 1/2 with
radius 0). The run stops
when no later checkpoint can certify a higher level (the top reachable level is certified, or
the last checkpoint is done) or when futility says the next level is out of reach:
``Beta.ppf(1 - alpha_f, k + 1, n_j - k) < p_{level+1}``.

**Why it is valid.** Condition on the selection samples (an independent stream), so the
selected class's probability p is fixed. Each lb_j is an ordinary fixed-n bound: P(lb_j > p)
<= alpha_j, whatever the other checkpoints; the union bound over all J checkpoints gives
P(some lb_j > p) <= sum alpha_j <= alpha (no independence needed, so one cumulative stream is
fine). A false decision "radius >= r_i" needs some visited lb_j >= p_i > p; the stopping rule
(futility included, whatever alpha_f) only deletes checkpoints from that union, so it cannot
add an error. fine-cp is the same union (its looks' alphas sum to alpha) and its
conditional-power futility, like any stopping rule, only stops without claiming. Every image
keeps Cohen's per-image 1 - alpha guarantee. The stream is
prefix-stable (:class:`bench.certify.smoothing.StreamCounts`): the first n estimation samples are
exactly those a fixed-N Cohen run with the same seed and image sees.

**Budget.** ``budget.n`` is the last checkpoint, the worst case per image (so
``predictions_per_image`` is too); most images stop much earlier and certificates record the
passes actually spent. The default checkpoints scale the spec's 200, 800, ..., 51,200, 120,000
(for N = 100,000) to the run: ceil(1.2 N) last, the geometric points below it before. With
``--budget B`` the last checkpoint is B // m, so the worst case fits the budget (the cascade's
rule). Default alphas: alpha/2 on the last checkpoint and alpha/2 split evenly over the others
(the spec's alpha/10 x 5 + alpha/2 for six checkpoints); all of alpha when there is one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, binom, norm

from bench.certify import stats
from bench.certify.budget import Budget, check_request, n_for_budget
from bench.certify.noise import PHASE_ESTIMATE, PHASE_SELECT
from bench.certify.procedures.base import ProcedureSpec, noise_streams, single_scale_sigma
from bench.certify.records import Certificate
from bench.certify.smoothing import Smooth, StreamCounts
from bench.contract import BaseClassifier, Cost
from bench.errors import ConfigError

ABSTAIN = stats.ABSTAIN
GEOMETRIC = (200, 800, 3_200, 12_800, 51_200)  # the spec's looks before the last (N = 100,000)
ALPHA_FUTILITY = 0.001  # futility level: affects power and cost only, never validity
RULES = ("gs-cp", "fine-cp")  # sequential_rule: version 1 (the spec's), fine looks + power
FINE_FIRST, FINE_RATIO_TENTHS, FINE_LAST_SHARE = 100, 11, 0.8  # fine-cp's looks and alpha split
FINE_ALPHA_F, FUTILITY_POWER = 0.01, 0.05  # fine-cp's futility: cost and power only
CONTINUE, STOP_DONE, STOP_FUTILITY = 0, 1, 2  # codes of checkpoint_step's ``stop``


# ----- the schedule ---------------------------------------------------------------------------
def default_checkpoints(last: int) -> tuple[int, ...]:
    """The spec's geometric looks below ``last``, then ``last``."""
    return tuple(n for n in GEOMETRIC if n < last) + (int(last),)


def last_for_n(n: int) -> int:
    """ceil(1.2 N) in integers: the spec's 120,000 for N = 100,000."""
    return -(-6 * int(n) // 5)


def default_alphas(alpha: float, count: int, last_share: float = 0.5) -> tuple[float, ...]:
    """``last_share`` of alpha on the last checkpoint (gs-cp: 1/2), the rest split evenly over
    the earlier ones."""
    if count == 1:
        return (alpha,)
    rest = alpha * (1 - last_share)
    return (rest / (count - 1),) * (count - 1) + (alpha * last_share,)


def fine_checkpoints(last: int) -> tuple[int, ...]:
    """fine-cp's looks: 100, then each x1.1 rounded up, below ``last``; then ``last``."""
    out, n = [], FINE_FIRST
    while n < last:
        out.append(n)
        n = max(n + 1, -(-n * FINE_RATIO_TENTHS // 10))  # ceil(1.1 n) in integers
    return (*out, int(last))


def check_schedule(checkpoints: Sequence[int], alphas: Sequence[float], alpha: float) -> None:
    """Checkpoints positive and strictly increasing, one alpha in (0, 1) each, sum <= alpha."""
    if not checkpoints:
        raise ConfigError("checkpoints: give at least one estimation size")
    if any(int(n) != n or n < 1 for n in checkpoints):
        raise ConfigError(f"checkpoints must be positive integers, got {list(checkpoints)}")
    if any(b <= a for a, b in zip(checkpoints, checkpoints[1:], strict=False)):
        raise ConfigError(f"checkpoints must be strictly increasing, got {list(checkpoints)}")
    if len(alphas) != len(checkpoints):
        raise ConfigError(f"checkpoint alphas: {len(alphas)} given for {len(checkpoints)} "
                          f"checkpoints; give one per checkpoint")
    if any(not 0 < a < 1 for a in alphas):
        raise ConfigError(f"checkpoint alphas must be in (0, 1), got {list(alphas)}")
    if sum(alphas) > alpha * (1 + 1e-9):
        raise ConfigError(f"checkpoint alphas sum to {sum(alphas):g}, more than alpha = "
                          f"{alpha:g}; the union bound needs sum <= alpha")


def resolve_schedule(spec: ProcedureSpec, m: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(checkpoints, alphas) of a run: spec.checkpoints as given, else scaled from N (--budget
    B: last = B // m; --n or the dataset default N: last = ceil(1.2 N) for gs-cp, N for
    fine-cp)."""
    check_request(spec.n0, spec.n, spec.budget)
    fine = spec.sequential_rule == "fine-cp"
    looks = fine_checkpoints if fine else default_checkpoints
    if spec.checkpoints:
        checkpoints = tuple(spec.checkpoints)
        if spec.budget is not None and checkpoints[-1] * m > spec.budget:
            raise ConfigError(f"the last checkpoint {checkpoints[-1]:,} x m = {m} exceeds "
                              f"--budget {spec.budget:,}; lower it or raise the budget")
    elif spec.budget is not None:
        checkpoints = looks(n_for_budget(spec.budget, m, spec.method))
    else:
        n = spec.n if spec.n is not None else spec.dataset.default_n
        checkpoints = looks(n if fine else last_for_n(n))
    alphas = (tuple(float(a) for a in spec.checkpoint_alphas) if spec.checkpoint_alphas
              else default_alphas(spec.alpha, len(checkpoints),
                                  FINE_LAST_SHARE if fine else 0.5))
    check_schedule(checkpoints, alphas, spec.alpha)
    return checkpoints, alphas


def level_grid(spec: ProcedureSpec) -> tuple[float, ...]:
    """The grid levels: radius 0 (level 0) and the run's radii, sorted."""
    radii = spec.radii or spec.dataset.radii
    if any(not (math.isfinite(r) and r >= 0) for r in radii):
        raise ConfigError(f"radii must be finite and non-negative, got {list(radii)}")
    return tuple(sorted({0.0, *(float(r) for r in radii)}))


# ----- the decision (pure: counts in, levels out; vectorized over runs) -----------------------
def level_of(thresholds: np.ndarray, p) -> np.ndarray:
    """The largest grid level i with p > thresholds[i] (strictly: a bound equal to a
    threshold claims nothing there); -1 at or below level 0's."""
    return np.searchsorted(thresholds, p, side="left") - 1


def reachable_levels(checkpoints: Sequence[int], alphas: Sequence[float],
                     thresholds: np.ndarray) -> list[int]:
    """Per checkpoint, the highest level its bound can reach (all n_j samples agreeing)."""
    return [int(level_of(thresholds, stats.cp_lower(n, n, a)))
            for n, a in zip(checkpoints, alphas, strict=True)]


def later_tops(reach: Sequence[int]) -> list[int]:
    """Per checkpoint, the highest level any LATER checkpoint can reach (-1 after the last)."""
    return [max(reach[j + 1:], default=-1) for j in range(len(reach))]


def last_look_counts(n_last: int, alpha_last: float, thresholds: np.ndarray) -> np.ndarray:
    """Per level, the fewest successes of ``n_last`` whose CP bound at ``alpha_last`` exceeds
    the level's threshold (n_last + 1 where none does): what the last look needs. The bound
    increases with k, so bisect."""
    needs = []
    for p in thresholds:
        lo, hi = 0, n_last + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if mid <= n_last and stats.cp_lower(mid, n_last, alpha_last) > p:
                hi = mid
            else:
                lo = mid + 1
        needs.append(lo)
    return np.asarray(needs)


def conditional_power(k, n: int, p_upper, power: tuple[int, np.ndarray], nxt) -> np.ndarray:
    """P(the last look certifies level ``nxt``) if the remaining samples agree with
    probability ``p_upper``: the last look needs ``need`` more successes of n_last - n."""
    n_last, needs = power
    need = needs[nxt] - np.asarray(k)
    remaining = n_last - n
    return np.where(need <= 0, 1.0, np.where(need > remaining, 0.0,
                                             binom.sf(need - 1, remaining, p_upper)))


def checkpoint_step(level, k, n: int, alpha_j: float, thresholds: np.ndarray, later_top: int,
                    alpha_f: float, power: tuple[int, np.ndarray, float] | None = None):
    """One look at checkpoint j for runs with ``k`` successes of ``n``: (level, lb, ub, stop).

    lb is the one-sided CP bound at alpha_j (0 when k = 0); the level never decreases; stop is
    STOP_DONE when no later checkpoint can certify a higher level, STOP_FUTILITY when the CP
    upper bound ub at alpha_f is below the next level's threshold (gs-cp) or, with ``power``
    = (n_last, the last look's needed counts per level, futility_power) (fine-cp), when the
    last look's conditional power at p = ub is below futility_power; else CONTINUE."""
    k = np.asarray(k)
    u, back = np.unique(k, return_inverse=True)  # many runs share few counts: bound each once
    u = u.astype(float)
    with np.errstate(invalid="ignore"):
        lb = np.where(u > 0, beta.ppf(alpha_j, np.maximum(u, 1), n - u + 1), 0.0)
        ub = (np.where(u < n, beta.ppf(1 - alpha_f, u + 1, np.maximum(n - u, 1)), 1.0)
              if alpha_f > 0 else np.ones_like(u))
    lb, ub = lb[back].reshape(k.shape), ub[back].reshape(k.shape)
    level = np.maximum(level, level_of(thresholds, lb))
    done = level >= later_top
    nxt = level + 1
    capped = np.minimum(nxt, len(thresholds) - 1)
    if power is None:
        short = ub < thresholds[capped]
    else:
        n_last, needs, floor = power
        short = (n < n_last) & (conditional_power(k, n, ub, (n_last, needs), capped) < floor)
    futile = (~done) & (nxt < len(thresholds)) & short
    stop = np.where(done, STOP_DONE, np.where(futile, STOP_FUTILITY, CONTINUE))
    return level, lb, ub, stop


def power_futility(checkpoints: Sequence[int], alphas: Sequence[float], thresholds: np.ndarray,
                   floor: float = FUTILITY_POWER) -> tuple[int, np.ndarray, float]:
    """fine-cp's ``power`` argument of :func:`checkpoint_step` for a schedule."""
    return (int(checkpoints[-1]), last_look_counts(int(checkpoints[-1]), alphas[-1], thresholds),
            float(floor))


def sequential_levels(counts: np.ndarray, checkpoints: Sequence[int], alphas: Sequence[float],
                      thresholds: np.ndarray, alpha_f: float = ALPHA_FUTILITY,
                      power: tuple[int, np.ndarray, float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Final levels and stopping checkpoints of many runs from their cumulative successes
    ``counts`` (runs x checkpoints): the procedure's rule without the sampling."""
    counts = np.asarray(counts)
    runs = counts.shape[0]
    tops = later_tops(reachable_levels(checkpoints, alphas, thresholds))
    level = np.full(runs, -1)
    stopped = np.full(runs, -1)
    active = np.ones(runs, dtype=bool)
    for j, (n, a) in enumerate(zip(checkpoints, alphas, strict=True)):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        new, _, _, stop = checkpoint_step(level[idx], counts[idx, j], n, a, thresholds,
                                          tops[j], alpha_f, power)
        level[idx] = new
        ended = idx[stop != CONTINUE]
        stopped[ended] = j
        active[ended] = False
    return level, stopped


# ----- the procedure --------------------------------------------------------------------------
class Sequential:
    """GS-CP: see the module docstring for the rule, the proof and the budget."""

    name = "sequential"

    def __init__(self, base: BaseClassifier, num_classes: int, spec: ProcedureSpec, *,
                 alpha_f: float | None = None):
        if spec.sequential_rule not in RULES:
            raise ConfigError(f"unknown sequential rule {spec.sequential_rule!r}; valid: "
                              f"{', '.join(RULES)}")
        self.rule = spec.sequential_rule
        fine = self.rule == "fine-cp"
        if alpha_f is None:
            alpha_f = FINE_ALPHA_F if fine else ALPHA_FUTILITY
        if not 0 <= alpha_f < 1:
            raise ConfigError(f"alpha_f must be in [0, 1), got {alpha_f}")
        self.base = base
        self.smooth = Smooth(base, num_classes, spec.sigma)
        self.spec, self.sigma, self.num_classes = spec, spec.sigma, num_classes
        self.alpha_f = float(alpha_f)
        self.cost: Cost = getattr(base, "cost", Cost())
        m = int(getattr(self.cost, "m", 1) or 1)
        self.checkpoints, self.alphas = resolve_schedule(spec, m)
        assert sum(self.alphas) <= spec.alpha * (1 + 1e-9)
        # n = the last checkpoint: predictions_per_image is the worst case (see the docstring)
        self.budget = Budget(n0=spec.n0, n=self.checkpoints[-1], m=m, requested=spec.budget)
        self.grid = level_grid(spec)
        self.thresholds = norm.cdf(np.asarray(self.grid) / self.sigma)
        self.reach = reachable_levels(self.checkpoints, self.alphas, self.thresholds)
        self.later_top = later_tops(self.reach)
        self.power = (power_futility(self.checkpoints, self.alphas, self.thresholds)
                      if fine else None)

    @classmethod
    def run_sigma(cls, method, requested: float | None) -> float:
        """--sigma, or the default; a method certified by another procedure (the cascade) is
        refused: sequential is a drop-in for Cohen's CERTIFY only."""
        return single_scale_sigma(cls.name, ("cohen", cls.name), method, requested)

    @classmethod
    def build(cls, spec: ProcedureSpec, method, ctx) -> Sequential:
        return cls(method.base_classifier(ctx), ctx.dataset.num_classes, spec)

    @property
    def top_level(self) -> int:
        """The highest grid level any checkpoint can certify (-1: none)."""
        return max(self.reach)

    def card(self) -> dict[str, Any]:
        top = self.top_level
        best = max(stats.cp_lower(n, n, a) for n, a in zip(self.checkpoints, self.alphas,
                                                             strict=True))
        rule = ({"rule": self.rule, "futility_power": FUTILITY_POWER}
                if self.power is not None else {"rule": self.rule})
        return {
            "name": self.name, "alpha": self.spec.alpha, **rule,
            "alpha_split": "alpha_j at checkpoint j on one cumulative stream (union bound)",
            "checkpoints": list(self.checkpoints), "checkpoint_alphas": list(self.alphas),
            "alpha_spent": sum(self.alphas), "alpha_f": self.alpha_f,
            "grid": list(self.grid), "label_aware": self.spec.label_aware,
            "n0": self.budget.n0, "n": self.budget.n,
            "n_is": "the last checkpoint: the worst case per image",
            "max_certifiable_radius": self.grid[top] if top >= 0 else 0.0,
            "max_continuous_radius": stats.radius_from_bound(best, self.sigma),
            "phases": [PHASE_SELECT, PHASE_ESTIMATE],
            "noise_streams": noise_streams(
                {PHASE_SELECT: "selection (N0)",
                 PHASE_ESTIMATE: "estimation: one cumulative stream up to the last checkpoint"},
                self.base),
        }

    def describe(self) -> dict[str, Any] | None:
        describe = getattr(self.base, "describe", None)
        return describe() if callable(describe) else None

    # ----- one image --------------------------------------------------------------------------
    def certify(self, x: torch.Tensor, idx: int, label: int | None) -> Certificate:
        s, b = self.spec, self.budget
        start = time.perf_counter()
        x = Smooth._prepare(x)
        select = self.smooth.sample_counts(x, b.n0, s.batch, seed=s.seed, index=idx,
                                           phase=PHASE_SELECT)
        counts_select = self.smooth._checked(select.cpu().tolist(), idx)
        top = int(np.argmax(counts_select))
        if s.label_aware and label is not None and top != label:
            # No estimation, so no certificate: abstain (the image is not certified-correct at
            # any radius either way, since the selected class is not the label).
            return self._record(ABSTAIN, 0.0, 0.0, top, 0, 0, counts_select,
                                [0] * self.num_classes, [], start, idx, label,
                                "wrong class: stopped after selection (label-aware)")
        counter = StreamCounts(self.smooth, x, s.batch, seed=s.seed, index=idx,
                               phase=PHASE_ESTIMATE)
        level, best, records, stop = -1, 0.0, [], CONTINUE
        last = len(self.checkpoints) - 1
        for j, (n, a) in enumerate(zip(self.checkpoints, self.alphas, strict=True)):
            counts = counter.extend_to(n)
            new, lb, ub, stop = checkpoint_step(level, counts[top], n, a, self.thresholds,
                                                self.later_top[j], self.alpha_f, self.power)
            level, lb, ub, stop = int(new), float(lb), float(ub), int(stop)
            best = max(best, lb)
            decision = ("last checkpoint" if j == last else
                        "top reachable level certified" if stop == STOP_DONE else
                        "futility" if stop == STOP_FUTILITY else "continue")
            records.append({"stage": j, "checkpoint": j, "sigma": self.sigma, "n0": b.n0,
                            "n": n, "count": counts[top], "p_lower": lb, "alpha": a,
                            "level": level, "p_upper_futility": ub, "decision": decision,
                            "counts_estimate": counts})
            if stop != CONTINUE:
                break
        end = records[-1]
        n, used = end["n"], f"{end['n']:,} samples"
        if level >= 0:
            prediction, radius = top, self._radius(best, level)
            r = f"{self.grid[level]:g}"
            if end["decision"] == "futility":
                outcome = (f"futility: level {level + 1} out of reach after {used}; "
                           f"certified grid level {level}, r >= {r}")
            else:
                outcome = f"certified at grid level {level} (r >= {r}) after {used}"
        else:
            prediction, radius = ABSTAIN, 0.0
            outcome = ("abstain: futility: level 0 out of reach after " + used
                       if end["decision"] == "futility" else f"abstain: no level after {used}")
        return self._record(prediction, radius, best, top, end["count"], n, counts_select,
                            end["counts_estimate"], records, start, idx, label, outcome)

    def _radius(self, best: float, level: int) -> float:
        """sigma * PhiInv(best), kept in [r_level, r_level+1) against rounding, so that a
        table cell r counts (radius >= r) exactly at the certified levels."""
        radius = max(self.grid[level], stats.radius_from_bound(best, self.sigma))
        if level + 1 < len(self.grid):
            radius = min(radius, math.nextafter(self.grid[level + 1], -math.inf))
        return radius

    def _record(self, prediction, radius, p_lower, top, count, n, counts_select,
                counts_estimate, records, start, idx, label, outcome) -> Certificate:
        samples = self.budget.n0 + n
        return Certificate(
            prediction=prediction, radius=radius, p_lower=p_lower, top_class=top, count=count,
            n0=self.budget.n0, n=n, counts_select=counts_select,
            counts_estimate=counts_estimate,
            classifier_passes=samples * self.cost.classifier_passes,
            diffusion_passes=samples * self.cost.diffusion_passes,
            seconds=time.perf_counter() - start, idx=idx, label=label, outcome=outcome,
            stages=records,
        )
