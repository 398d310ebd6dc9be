"""``python -m bench merge``: combine results stores (the shards of ``run --shard I/K``
certified in other folders or on other machines) into one, and export the merged runs.

Runs are matched by run id and identity card; a certificate present in two stores must be
identical (it is then kept once), else the merge is refused and nothing is written (exit 2).
Prints, per run, the images merged from each store, the duplicates and the gaps (images of
the run's subset that no store has certified). Merging again changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from bench.commands.common import folder

HELP = "combine the results stores of shards (other --results folders) into one"


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                   help="results folders to merge from (each holds a certbench.sqlite)")
    p.add_argument("--results", type=folder, default=Path("results"),
                   help="the results folder to merge into (created if missing; default "
                        "results)")


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.store.merge import format_result, merge

    print(format_result(merge(args.results, args.sources)))
    return 0
