"""Multi-scale certification (Jeong & Shin, NeurIPS 2023, §7 of algorithms.md), made sound.

One base classifier per noise scale sigma_1 > ... > sigma_K (the method supplies them: the
DDS denoise-then-classify of one diffusion model at each sigma, for ``multiscale``). Per image,
from the largest scale down, stage k draws its own selection (N0) and estimation (N) samples
from fresh streams (phases 10k and 10k + 1; stage 0 uses Cohen's phases 0 and 1) and

* **accepts** the selected class c when the lower bound ``p_lo`` of its probability is above
  p0 (strictly: at ``p_lo = p0`` another class may sit at p0 too, and the radius would be 0):
  ``R_k = sigma_k (PhiInv(p_lo) - PhiInv(p0))``;
* **abstains** (undecided) when it does not accept but the upper bound of c reaches p0;
* **falls through** to the next smaller scale only when that upper bound is below p0; the
  stage is then "skipped" and its per-class upper bounds are kept.

On acceptance of class c at stage k the radius is ``min(R_k, R'_j for every skipped j)`` with
``R'_j = sigma_j (PhiInv(p0) - PhiInv(u_j))`` and ``u_j = max over classes c' != c`` of stage j's
per-class upper bounds: inside that ball no other class reaches p0 at any skipped scale (each
``PhiInv(p_c')`` is 1/sigma_j-Lipschitz), so the cascade cannot exit earlier with another label,
and c stays above p0 at scale k. A radius that is not positive abstains (an off-class bound
equal to p0 leaves no ball at all). ``u_j`` bounds the other classes directly, never by
1 - (a lower bound of some class), the reference code's unsound edge case. With one scale and
p0 = 1/2 this is Cohen's CERTIFY on the same streams, except at a bound of exactly 1/2, which
Cohen's reference rule certifies with radius 0 and the cascade abstains on.

**Alpha (the proof).** Let K be the number of scales and C the number of classes.
:func:`alpha_split` gives stage k < K a lower-bound level ``a_k = alpha / (2K)`` for its
selected class and a level ``b_k = alpha / (2KC)`` for each of its C per-class upper bounds; the
last stage (never skipped before an acceptance) gets ``a_K = alpha / K`` and no upper bounds.
Define, for every stage whether or not it is visited (its samples exist in principle, drawn
independently of the other stages), the failure events ``L_k = {p_c(k) < p_lo(k)}`` for the class
selected at stage k (a one-sided Clopper-Pearson bound; selection and estimation samples are
independent, so P(L_k) <= a_k) and ``U_k,c' = {p_c'(k) > u_c'(k)}`` (P <= b_k each). If none of
them happens, every bound the cascade uses is valid, so the returned label and radius are
correct (the argument above). Hence
``P(wrong certificate) <= sum_k a_k + sum_{k<K} C b_k = (K-1) alpha/(2K) + (K-1) alpha/(2K)
+ alpha/K = alpha``. The fall-through test uses the selected class's upper bound from the same
family, so it costs nothing extra. The card records the split (``alpha_split``).

The reference spends alpha/(k+1) on each side of stage k's two-sided interval (about 1.83 alpha
over three stages, 2 alpha on stage 0 alone): a class sitting exactly at p0 at the first scale
makes it certify a positive radius with probability close to 2 alpha
(tests/test_cascade.py shows it; ours stays below alpha there).

**Budget.** ``--budget B`` gives every stage N = B // (K m) estimation samples, so the worst
case, all K stages, spends at most B predictions (plus K N0 selection samples, which Cohen's
budget also leaves out); an image accepted early costs less. Certificates record the passes
actually spent, and summaries report their mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from bench.certify import stats
from bench.certify.budget import Budget, check_request
from bench.certify.noise import PHASE_ESTIMATE, PHASE_SELECT
from bench.certify.procedures.base import ProcedureSpec, noise_streams
from bench.certify.records import Certificate
from bench.certify.smoothing import Smooth
from bench.contract import Cost
from bench.errors import ConfigError
from bench.params import Param

ABSTAIN = stats.ABSTAIN
STAGE_PHASE_STRIDE = 10  # stage k draws from phases 10k (select) and 10k + 1 (estimate)

# The params a method declares to run under the cascade (methods.multiscale does).
CASCADE_PARAMS: dict[str, Param] = {
    "scales": Param([0.25, 0.5, 1.0], list, sigmas=True,
                    doc="noise levels of the cascade in [0, 1] pixel units (largest first)"),
    "p0": Param(0.5, float, low=0.5, high=0.999,
                doc="accept a stage when the lower bound of its top class reaches p0"),
}


@dataclass(frozen=True)
class StageLevels:
    """Failure probabilities of one stage's bounds: the selected class's lower bound, and each
    of the C per-class upper bounds (0: the stage computes none)."""

    lower: float
    upper_each: float


def alpha_split(alpha: float, num_stages: int, num_classes: int) -> list[StageLevels]:
    """alpha / K per stage; a non-final stage halves it between its lower bound and C upper
    bounds (Bonferroni), the last stage puts all of it on its lower bound. Sums to alpha."""
    k, c = num_stages, num_classes
    share = alpha / k
    return [StageLevels(share / 2, share / (2 * c)) for _ in range(k - 1)] + \
        [StageLevels(share, 0.0)]


def spent(levels: list[StageLevels], num_classes: int) -> float:
    """The union bound of all failure events: what :func:`alpha_split` must keep <= alpha."""
    return sum(lv.lower + num_classes * lv.upper_each for lv in levels)


def stage_phases(stage: int) -> tuple[int, int]:
    """Noise phases (selection, estimation) of a stage; stage 0's are Cohen's."""
    base = STAGE_PHASE_STRIDE * stage
    return base + PHASE_SELECT, base + PHASE_ESTIMATE


class Cascade:
    """Multi-scale CERTIFY: see the module docstring for the rule, the proof and the budget."""

    name = "cascade"

    def __init__(self, bases: list, scales: list[float], p0: float, num_classes: int,
                 spec: ProcedureSpec, budget: Budget):
        if len(bases) != len(scales):
            raise ValueError("one base classifier per scale")
        order = sorted(range(len(scales)), key=lambda i: -scales[i])  # largest first
        self.scales = [float(scales[i]) for i in order]
        self.smooths = [Smooth(bases[i], num_classes, scales[i]) for i in order]
        self.bases = [bases[i] for i in order]
        self.p0, self.num_classes, self.spec, self.budget = float(p0), num_classes, spec, budget
        self.cost: Cost = getattr(self.bases[0], "cost", Cost())
        self.levels = alpha_split(spec.alpha, len(self.scales), num_classes)
        assert spent(self.levels, num_classes) <= spec.alpha * (1 + 1e-12)
        self.sigma = self.scales[0]
        self._phi_p0 = float(norm.ppf(self.p0))

    @property
    def base(self):
        """The first stage's base classifier (the largest scale), e.g. for a cost estimate."""
        return self.bases[0]

    @classmethod
    def run_sigma(cls, method, requested: float | None) -> float:
        """The largest scale: the run's sigma in tables. --sigma may only repeat it."""
        _check_declares(method)
        top = max(method.params["scales"])
        if requested is not None and requested != top:
            scales = ",".join(f"{v:g}" for v in method.params["scales"])
            raise ConfigError(
                f"--sigma {requested:g} does not apply to the cascade, whose noise levels are "
                f"the param scales ({scales}); drop --sigma or pass --param scales=...")
        return top

    @classmethod
    def build(cls, spec: ProcedureSpec, method, ctx) -> Cascade:
        _check_declares(method)
        scales, p0 = list(method.params["scales"]), float(method.params["p0"])
        bases = [method.base_classifier(replace(ctx, sigma=s)) for s in scales]
        m = getattr(getattr(bases[0], "cost", None), "m", 1) or 1
        return cls(bases, scales, p0, ctx.dataset.num_classes, spec,
                   resolve_budget(spec, len(scales), m))

    # ----- the card -------------------------------------------------------------------------
    def card(self) -> dict[str, Any]:
        return {
            "name": self.name, "alpha": self.spec.alpha, "scales": self.scales, "p0": self.p0,
            "alpha_split": [{"sigma": s, "lower": lv.lower, "upper_each_class": lv.upper_each}
                            for s, lv in zip(self.scales, self.levels, strict=True)],
            "alpha_spent": spent(self.levels, self.num_classes),
            "n0": self.budget.n0, "n": self.budget.n, "n_is": "per stage",
            "budget_rule": "N = budget // (stages x m): the worst case fits the budget",
            "max_certifiable_radius": self.max_radius(),
            "phases": {f"{s:g}": list(stage_phases(k)) for k, s in enumerate(self.scales)},
            "noise_streams": self.noise_streams(),
        }

    def noise_streams(self) -> list[dict[str, Any]]:
        """Each stage's selection and estimation streams (and its base classifier's own)."""
        out: list[dict[str, Any]] = []
        for k, (sigma, base) in enumerate(zip(self.scales, self.bases, strict=True)):
            select, estimate = stage_phases(k)
            out += noise_streams({select: f"selection (N0) at stage {k}, sigma {sigma:g}",
                                  estimate: f"estimation (N) at stage {k}, sigma {sigma:g}"},
                                 base)
        return out

    def describe(self) -> dict[str, Any] | None:
        out = {}
        for s, base in zip(self.scales, self.bases, strict=True):
            describe = getattr(base, "describe", None)
            if callable(describe):
                out[f"sigma={s:g}"] = describe()
        return out or None

    def _no_ball(self, skipped, records, sigma: float) -> str:
        """Why an accepted class gets no positive radius: the skipped scale whose off-class
        bound binds (it reaches p0), else the accepting scale's own bound."""
        if not skipped:
            return f"abstain: no positive radius at sigma={sigma:g}"
        binding = min(skipped, key=lambda js: records[js[0]]["off_class_radius"])[0]
        return f"abstain: another class may reach p0 at sigma={self.scales[binding]:g}"

    def max_radius(self) -> float:
        """The largest radius any image can get: all N samples agreeing at some stage."""
        n = self.budget.n
        best = 0.0
        for s, lv in zip(self.scales, self.levels, strict=True):
            p_lo = math.exp(math.log(lv.lower) / n)  # CP lower bound of n out of n
            best = max(best, s * (float(norm.ppf(p_lo)) - self._phi_p0))
        return best

    # ----- one image ------------------------------------------------------------------------
    def certify(self, x: torch.Tensor, idx: int, label: int | None) -> Certificate:
        s, b = self.spec, self.budget
        start = time.perf_counter()
        x = Smooth._prepare(x)
        records: list[dict[str, Any]] = []
        skipped: list[tuple[int, list[float]]] = []  # (stage, per-class upper bounds)
        prediction, radius, outcome = ABSTAIN, 0.0, ""
        for k, (sigma, smooth, lv) in enumerate(zip(self.scales, self.smooths, self.levels,
                                                     strict=True)):
            counts_select, counts_estimate = smooth.select_and_estimate(
                x, b.n0, b.n, s.batch, seed=s.seed, index=idx, phases=stage_phases(k))
            top = int(np.argmax(counts_select))
            count = counts_estimate[top]
            p_lower = stats.cp_lower(count, b.n, lv.lower)
            uppers = (stats.cp_upper_each(counts_estimate, b.n, lv.upper_each)
                      if lv.upper_each > 0 else None)
            record = {"stage": k, "sigma": sigma, "top_class": top, "count": count,
                      "n0": b.n0, "n": b.n, "p_lower": p_lower,
                      "p_upper": None if uppers is None else uppers[top],
                      "counts_select": counts_select, "counts_estimate": counts_estimate}
            records.append(record)
            if p_lower > self.p0:
                record["decision"] = "accept"
                radius = sigma * (float(norm.ppf(p_lower)) - self._phi_p0)
                record["radius"] = radius
                for j, upper in skipped:
                    off = max((u for c, u in enumerate(upper) if c != top), default=0.0)
                    r_off = self.scales[j] * (self._phi_p0 - float(norm.ppf(off)))
                    records[j]["off_class_upper"], records[j]["off_class_radius"] = off, r_off
                    radius = min(radius, r_off)
                if radius <= 0:  # no ball: a claim needs a positive radius
                    record["decision"] = "no positive radius"  # not an acceptance
                    outcome = self._no_ball(skipped, records, sigma)
                    radius = 0.0
                else:
                    prediction = top
                    radius = max(0.0, radius)
                    outcome = f"accept at sigma={sigma:g}"
                break
            if uppers is None:
                record["decision"] = "below p0"
                outcome = "abstain: no scale reached p0"
                break
            if uppers[top] >= self.p0:
                record["decision"] = "undecided"
                outcome = f"abstain: undecided at sigma={sigma:g}"
                break
            record["decision"] = "skip"
            skipped.append((k, uppers))
        last = records[-1]
        visited = len(records) * (b.n0 + b.n)
        return Certificate(
            prediction=prediction, radius=radius, p_lower=last["p_lower"],
            top_class=last["top_class"], count=last["count"], n0=b.n0, n=b.n,
            counts_select=last["counts_select"], counts_estimate=last["counts_estimate"],
            classifier_passes=visited * self.cost.classifier_passes,
            diffusion_passes=visited * self.cost.diffusion_passes,
            seconds=time.perf_counter() - start, idx=idx, label=label,
            outcome=outcome, stages=records,
        )


def _check_declares(method) -> None:
    missing = [k for k in CASCADE_PARAMS if k not in method.params]
    if missing:
        raise ConfigError(
            f"method {method.id!r} cannot run under the cascade procedure: it declares no "
            f"{'/'.join(missing)} param (bench.certify.procedures.cascade.CASCADE_PARAMS); use "
            "--method multiscale, or drop --procedure")


def resolve_budget(spec: ProcedureSpec, stages: int, m: int) -> Budget:
    """N per stage: --n as given, else budget // (stages x m), else the dataset default."""
    check_request(spec.n0, spec.n, spec.budget)
    n = spec.n
    if spec.budget is not None:
        if spec.budget < stages * m:
            raise ConfigError(
                f"--budget {spec.budget} is smaller than {stages} stages x m = {m}; use a "
                f"budget of at least {stages * m}")
        n = spec.budget // (stages * m)
    elif n is None:
        n = spec.dataset.default_n
    return Budget(n0=spec.n0, n=n, m=m, requested=spec.budget, stages=stages)
