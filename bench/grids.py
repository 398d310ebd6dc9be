"""Deprecated: dataset names and radius grids live in :mod:`bench.dataspecs`."""

from bench.dataspecs import DATASET_NAMES, grid_for  # noqa: F401
