"""``python -m bench sweep``: certify methods over a grid of budgets for the cost of the largest.

Each budget is stored as the run ``run --budget B`` writes (same run id and certificates): the
fixed-N estimation stream is prefix-stable, so one pass at the largest N reads off the counts
at every smaller N (:mod:`bench.running.sweep`). Resumable and shardable like ``run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tabulate import tabulate

from bench.commands.common import certification_fields, certification_options, shard
from bench.commands.compare import int_list, name_list

if TYPE_CHECKING:
    from bench.running.runner import RunResult

HELP = "certify methods at several budgets in one pass each (one run per budget)"


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", help="dataset to certify (see 'list')")
    p.add_argument("--methods", type=name_list, default=["gaussian"],
                   help="comma-separated methods (default gaussian)")
    p.add_argument("--budgets", type=int_list, required=True, metavar="B1,B2,...",
                   help="predictions per image N x m, comma-separated: each budget is the run "
                        "'run --budget B' gives (N = B // m); N0 comes on top")
    p.add_argument("--m", type=int_list, default=None,
                   help="values of m for methods with an m param (default: the method's own)")
    p.add_argument("--shard", type=shard, default=(0, 1),
                   help="I/K: certify every K-th image of the subset from position I, as in run")
    p.add_argument("--model", action="append", default=None, metavar="[ROLE=]NAME",
                   help="a registered model name or local checkpoint, or ROLE=NAME (repeatable)")
    p.add_argument("--arch", default=None, help="architecture of a --model state dict")
    certification_options(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from dataclasses import replace

    from bench.running.plan import RunOptions
    from bench.running.runner import EmptyShard
    from bench.running.sweep import check_budgets, configurations, sweep

    budgets = check_budgets(args.budgets)
    base = RunOptions(**certification_fields(args), shard=args.shard, model=args.model,
                      arch=args.arch)
    for method, params in configurations(base, args.methods, args.m, budgets[0]):
        opts = replace(base, method=method, params={**base.params, **params})
        try:
            results = sweep(opts, budgets)
        except EmptyShard as empty:
            print(f"certbench: {empty}")
            return 0
        print(format_sweep(method, params, budgets, results))
    return 0


def format_sweep(method: str, params: dict, budgets: list[int],
                 results: list[RunResult]) -> str:
    """One line per budget: N, m, run id, new images, certified accuracy on the grid, ACR."""
    first = results[0].summary
    ident = first.card.identity
    radii = list(first.accuracy)
    setting = "".join(f" {k}={v}" for k, v in params.items())
    head = (f"{method}{setting} on {ident['dataset']} ({ident['subset']}: {first.images} images)"
            f"  sigma={ident['sigma']:g}  N0={ident['n0']:,}  alpha={ident['alpha']:g}  "
            f"seed={ident['seed']}")
    body = []
    for b, r in zip(budgets, results, strict=True):
        s = r.summary
        body.append([f"{b:,}", f"{s.card.identity['n']:,}", s.card.identity["m"], r.run_id,
                     r.new_images, *(100 * s.accuracy.get(k, float("nan")) for k in radii),
                     s.acr, s.seconds])
    table = tabulate(body, headers=["budget", "N", "m", "run", "new", *(f"{k:g}" for k in radii),
                                    "ACR", "s/img"],
                     floatfmt=("", "", "", "", "", *[".1f"] * len(radii), ".3f", ".3f"))
    folders = "\n".join(f"results: {r.folder / 'certs.tsv'}" for r in results)
    return "\n".join([head, table, folders])
