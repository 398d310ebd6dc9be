"""``python -m bench list``: show methods, datasets and models."""

from __future__ import annotations

from tabulate import tabulate

from bench.commands.common import common_registry
from bench.data import specs  # torch-free: listing loads no data
from bench.registry.entries import load_registry

HELP = "show methods, datasets and models"


def add_arguments(p) -> None:
    common_registry(p)


def run(args) -> int:
    reg = load_registry(args.registry, extra=args.extra_registry,
                        datasets=specs.DATASET_NAMES)
    rows = [[m.name, ", ".join(m.datasets) or "-", m.description] for m in reg.methods.values()]
    print(tabulate(rows, headers=["method", "datasets", "description"]))
    print()
    rows = []
    for name in specs.DATASET_NAMES:
        grid = specs.radius_grid(name)
        rows.append([name, ", ".join(specs.subset_names(name)),
                     f"{grid[0]:g}..{grid[-1]:g} step {grid[1] - grid[0]:g}"])
    print(tabulate(rows, headers=["dataset", "subsets", "radius grid"]))
    print()
    rows = [[m.name, m.get("arch", "-"), m.get("source"), m.get("dataset", "-"),
             m.get("sigma", "-"), m.get("trained_by", "-")] for m in reg.models.values()]
    print(tabulate(rows, headers=["model", "arch", "source", "dataset", "sigma", "trained by"]))
    return 0
