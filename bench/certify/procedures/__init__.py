"""Certification procedures: how one image becomes a :class:`bench.certify.records.Certificate`.

A procedure owns every bound it uses (and records how alpha is spent in the run's card);
methods never compute a bound. A run picks one by name (``--procedure``):

==========  ==================================================================================
cohen       Cohen et al.'s CERTIFY: N0 selection samples pick the class, N independent samples
            bound it at level alpha (:mod:`bench.certify.procedures.cohen`)
cascade     multi-scale CERTIFY (Jeong & Shin 2023), largest sigma first, accepting at the first
            scale confidently above p0; alpha split so the whole cascade errs with probability
            at most alpha (:mod:`bench.certify.procedures.cascade`)
sequential  group-sequential Clopper-Pearson ("GS-CP"): Cohen's selection, then one cumulative
            estimation stream checked at growing checkpoints (alpha split over them) until the
            top reachable grid radius is certified or the next is out of reach
            (:mod:`bench.certify.procedures.sequential`)
==========  ==================================================================================

A method names the procedure it is certified with (``Method.PROCEDURE``, Cohen's by default);
``--procedure`` may only repeat it.

Adding one = a module here with a class that has ``name``, ``card()`` and
``certify(x, idx, label)``, and an entry in :data:`PROCEDURES`; the runner is not edited.
"""

from __future__ import annotations

from bench.certify.procedures.base import Procedure, ProcedureSpec
from bench.certify.procedures.cascade import Cascade
from bench.certify.procedures.cohen import CohenFixedN
from bench.certify.procedures.sequential import Sequential
from bench.errors import ConfigError

DEFAULT = "cohen"
PROCEDURES: dict[str, type] = {CohenFixedN.name: CohenFixedN, Cascade.name: Cascade,
                               Sequential.name: Sequential}

__all__ = ["DEFAULT", "PROCEDURES", "Cascade", "CohenFixedN", "Procedure", "ProcedureSpec",
           "Sequential", "build", "get"]


def get(name: str) -> type:
    """The procedure class registered as ``name`` (checked before any model is loaded)."""
    cls = PROCEDURES.get(name)
    if cls is None:
        raise ConfigError(f"unknown procedure {name!r}; valid: {', '.join(PROCEDURES)}")
    return cls


def build(spec: ProcedureSpec, method, ctx) -> Procedure:
    """The procedure ``spec.name`` for this run (its base classifiers come from ``method``)."""
    return get(spec.name).build(spec, method, ctx)
