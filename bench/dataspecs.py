"""Dataset specs under their first path: ``from bench.dataspecs import DatasetSpec,
register_dataset`` (the API an own dataset used, CONTRIBUTING.md) keeps working.

The specs live in :mod:`bench.data.specs`; every name here is that module's (torch-free).
"""

from __future__ import annotations

from bench.data import specs as _specs


def __getattr__(name: str):
    return getattr(_specs, name)
