"""``python -m bench flops``: record the forward FLOPs of stored runs that lack them.

Runs certified before FLOPs were measured have no ``compute`` block in their card. Each is
prepared again from its card (nothing is certified), checked to load the very models, params
and data the run used, measured with ``torch.utils.flop_counter.FlopCounterMode``, and its
card gains the block; run ids and certificates are unchanged, and the run's export is written
again. Exported runs (e.g. ``leaderboards``) are merged into a store first::

    python -m bench merge leaderboards --results X
    python -m bench flops --results X
    python -m bench leaderboard --results X --out leaderboards
"""

from __future__ import annotations

from pathlib import Path

from bench.commands.common import folder

HELP = "record the forward FLOPs (compute block) of stored runs that lack them"


def add_arguments(p) -> None:
    p.add_argument("--results", type=folder, default=Path("results"),
                   help="the results folder whose store's runs get their FLOPs")
    p.add_argument("--device", default="cpu",
                   help="where the models are loaded to count (the count does not depend on it)")


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.running.backfill import backfill, check_results

    check_results(args.results)

    def say(item) -> None:
        if item.flops_per_prediction is None:
            print(f"{item.folder}: {item.note}")
        else:
            print(f"{item.folder}: {item.flops_per_prediction:,} FLOPs per prediction")

    done = backfill(args.results, device=args.device, on_run=say)
    missed = [d for d in done if d.flops_per_prediction is None]
    print(f"{len(done) - len(missed)} run(s) gained their FLOPs, {len(missed)} left as they were")
    return 1 if missed else 0
