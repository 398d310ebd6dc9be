"""``python -m bench leaderboard``: Markdown and static HTML leaderboards from the store.

Writes ``index.html``, ``<dataset>.html`` and ``<dataset>.md`` for every dataset with rows,
and copies each run's card and per-image TSV under ``runs/`` so the links work
offline. Reported numbers come from the registry (``--registry``/``--extra-registry``).
"""

from __future__ import annotations

from pathlib import Path

from bench.commands.common import common_registry, folder
from bench.registry.entries import load_registry

HELP = "write Markdown and static HTML leaderboards"


def add_arguments(p) -> None:
    p.add_argument("--out", type=folder, default=Path("leaderboards"),
                   help="folder the HTML and Markdown pages are written to")
    p.add_argument("--results", type=folder, default=Path("results"),
                   help="results folder to read the runs from: its store (read-only), else its "
                        "exported runs (runs/*/certs.tsv with their cards); without either, "
                        "only the registry's reported numbers are shown")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.reports.leaderboard import build
    from bench.store.exports import open_results

    registry = load_registry(args.registry, extra=args.extra_registry)
    # Reading never creates or changes a store: without a store or exported runs, only the
    # registry's numbers are shown.
    store = open_results(args.results)
    try:
        files = build(store, registry, args.out)
    finally:
        if store is not None:
            store.close()
    pages = [f for f in files if f.suffix == ".html"]
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(f.name for f in pages))
    return 0
