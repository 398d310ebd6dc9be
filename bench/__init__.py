"""certbench: certified L2 robustness by randomized smoothing, certified the same way for all.

``from bench import Smooth`` gives the Cohen-compatible smoothed classifier. It is imported
lazily so that the reporting side (registry, stats, metrics, store) works without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Smooth", "__version__"]


def __getattr__(name: str):
    if name == "Smooth":
        from bench.smoothing import Smooth

        return Smooth
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
