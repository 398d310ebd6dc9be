"""certbench: certified L2 robustness by randomized smoothing, certified the same way for all.

``from bench import Smooth`` gives the Cohen-compatible smoothed classifier, and
``bench.evaluate(model, dataset, ...)`` certifies an in-memory model through the CLI's harness
(:mod:`bench.evaluate`). Both are imported lazily so that the reporting side (registry, stats,
metrics, store) works without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Smooth", "__version__", "evaluate", "load_results"]


def __getattr__(name: str):
    if name == "Smooth":
        from bench.smoothing import Smooth

        return Smooth
    if name == "evaluate":
        from bench.evaluate import evaluate

        globals()["evaluate"] = evaluate  # the function, not the submodule the import set
        return evaluate
    if name == "load_results":  # results as pandas DataFrames (bench.results_api)
        from bench.results_api import load_results

        return load_results
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
