"""Cohen et al.'s CERTIFY with a fixed N: the procedure every method is ranked by today."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from bench.certify import budget
from bench.certify.noise import PHASE_ESTIMATE, PHASE_SELECT
from bench.certify.procedures.base import ProcedureSpec, noise_streams, single_scale_sigma
from bench.certify.records import Certificate
from bench.certify.smoothing import Smooth
from bench.contract import BaseClassifier, Cost


class CohenFixedN:
    """N0 selection samples pick the top class; N fresh, independent samples give its one-sided
    Clopper-Pearson bound at level alpha (all of alpha on that one bound); radius
    sigma * PhiInv(p_lower), abstain below 1/2. A bound of exactly 1/2 certifies radius 0:
    the reference code's rule, kept on purpose (:func:`bench.certify.stats.certify_decision`). The
    counting is :class:`bench.Smooth`'s."""

    name = "cohen"

    def __init__(self, base: BaseClassifier, num_classes: int, spec: ProcedureSpec):
        self.base = base
        self.smooth = Smooth(base, num_classes, spec.sigma)
        self.spec = spec
        self.sigma = spec.sigma
        self.cost: Cost = getattr(base, "cost", Cost())
        self.budget = budget.resolve(spec.dataset, spec.n0, spec.n, spec.budget, self.cost.m,
                                     spec.method)

    @classmethod
    def run_sigma(cls, method, requested: float | None) -> float:
        """--sigma, or the default; a method certified by another procedure is refused."""
        return single_scale_sigma(cls.name, (cls.name,), method, requested)

    @classmethod
    def build(cls, spec: ProcedureSpec, method, ctx) -> CohenFixedN:
        return cls(method.base_classifier(ctx), ctx.dataset.num_classes, spec)

    def card(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.spec.alpha,
                "alpha_split": "all of alpha on the one estimation bound",
                "n0": self.budget.n0, "n": self.budget.n,
                "noise_streams": noise_streams({PHASE_SELECT: "selection (N0)",
                                                PHASE_ESTIMATE: "estimation (N)"}, self.base)}

    def describe(self) -> dict[str, Any] | None:
        describe = getattr(self.base, "describe", None)
        return describe() if callable(describe) else None

    def certify(self, x: torch.Tensor, idx: int, label: int | None) -> Certificate:
        s, b = self.spec, self.budget
        cert = self.smooth.certify_record(x, b.n0, b.n, s.alpha, s.batch, seed=s.seed,
                                          index=idx)
        return replace(cert, idx=idx, label=label)

    def certify_prefixes(self, x: torch.Tensor, idx: int, label: int | None,
                         ns: Sequence[int]) -> list[Certificate]:
        """:meth:`certify` at each N of ``ns`` (this run's N0, alpha, sigma and seed) from one
        pass over the prefix-stable estimation stream: each record equals the one a run at
        that N certifies (a budget sweep, :mod:`bench.running.sweep`)."""
        s = self.spec
        certs = self.smooth.certify_prefixes(x, self.budget.n0, ns, s.alpha, s.batch,
                                             seed=s.seed, index=idx)
        return [replace(c, idx=idx, label=label) for c in certs]
