"""certbench: certified L2 robustness by randomized smoothing, certified the same way for all.

``from bench import Smooth`` gives the Cohen-compatible smoothed classifier
(:mod:`bench.certify.smoothing`), ``bench.evaluate(model, dataset, ...)`` certifies an
in-memory model through the CLI's harness (:mod:`bench.running.evaluate`) and
``bench.load_results`` reads a results store as DataFrames (:mod:`bench.reports.frames`). The
three are imported lazily (the front door's only upward imports), so that the reporting side
(registry, store, reports) works without torch.
"""

from __future__ import annotations

from bench.version import __version__

__all__ = ["Smooth", "__version__", "evaluate", "load_results"]


def __getattr__(name: str):
    if name == "Smooth":
        from bench.certify.smoothing import Smooth

        return Smooth
    if name == "evaluate":
        from bench.running.evaluate import evaluate

        return evaluate
    if name == "load_results":
        from bench.reports.frames import load_results

        return load_results
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
