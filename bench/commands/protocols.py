"""``python -m bench protocols``: fixed-N and sequential certification side by side (samples saved,
certified accuracy per radius under each)."""

from __future__ import annotations

from pathlib import Path

from bench.data import specs
from bench.errors import ConfigError

HELP = "fixed-N vs sequential certification side by side: samples per image and accuracy"


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", help="dataset whose runs to pair")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods to include (default: every method with a pair)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the results holding runs of both certifications: a --results folder (its "
                        "store, read-only) or a folder of exported runs")


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.reports.fixed_vs_sequential import pairs, render
    from bench.store.exports import open_results

    specs.spec(args.dataset)
    methods = [m for m in (args.methods or "").split(",") if m] or None
    store = open_results(args.results)  # read-only: never creates or changes a store
    if store is None:
        raise ConfigError(f"no results store or exported runs in {args.results}; run "
                          "'python -m bench run' first or pass --results DIR")
    try:
        print(render(pairs(store, args.dataset, methods)))
    finally:
        store.close()
    return 0
