"""Dataset loaders under their first path: ``from bench.datasets import CertDataset,
MemoryDataset`` (the API an own dataset's loader used, CONTRIBUTING.md) keeps working.

The loaders live in :mod:`bench.data.loaders`; every name here is that module's.
"""

from __future__ import annotations

from bench.data import loaders as _loaders


def __getattr__(name: str):
    return getattr(_loaders, name)
