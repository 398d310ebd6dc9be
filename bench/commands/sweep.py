"""``python -m bench sweep``: certify methods over a grid of budgets for the cost of the largest.

Each budget is stored as the run ``run --budget B`` writes (same run id and certificates): the
fixed-N estimation stream is prefix-stable, so one pass at the largest N reads off the counts
at every smaller N (:mod:`bench.running.sweep`). Resumable and shardable like ``run``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tabulate import tabulate

from bench.commands.common import (
    certification_fields,
    certification_options,
    flops_amount,
    shard,
)
from bench.commands.compare import int_list, name_list

if TYPE_CHECKING:
    from bench.running.runner import RunResult

HELP = "certify methods at several budgets in one pass each (one run per budget)"


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", help="dataset to certify (see 'list')")
    p.add_argument("--methods", type=name_list, default=["gaussian"],
                   help="comma-separated methods (default gaussian)")
    sizes = p.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--budgets", type=int_list, metavar="B1,B2,...",
                       help="predictions per image N x m, comma-separated: each budget is the "
                            "run 'run --budget B' gives (N = B // m); N0 comes on top")
    sizes.add_argument("--budgets-flops", type=flops_list, metavar="F1,F2,...",
                       help="forward FLOPs per image, comma-separated (e.g. 1e8,1e9): each is "
                            "the run 'run --budget-flops F' gives")
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

    by_flops = args.budgets_flops is not None
    budgets = check_budgets(args.budgets_flops if by_flops else args.budgets)
    base = RunOptions(**certification_fields(args), shard=args.shard, model=args.model,
                      arch=args.arch)
    smallest = 1 if by_flops else budgets[0]  # an m too large for a FLOPs budget: run says so
    for method, params in configurations(base, args.methods, args.m, smallest):
        opts = replace(base, method=method, params={**base.params, **params})
        try:
            results = sweep(opts, budgets, flops_unit=by_flops)
        except EmptyShard as empty:
            print(f"certbench: {empty}")
            return 0
        print(format_sweep(method, params, budgets, results, by_flops))
    return 0


def flops_list(text: str) -> list[int]:
    """Comma-separated FLOPs budgets (``1e8,3e8``), each as ``--budget-flops`` reads it."""
    values = [flops_amount(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one FLOPs budget")
    return values


def format_sweep(method: str, params: dict, budgets: list[int],
                 results: list[RunResult], by_flops: bool = False) -> str:
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
        body.append([f"{b:.3g}" if by_flops else f"{b:,}", f"{s.card.identity['n']:,}",
                     str(s.card.identity["m"]), r.run_id, str(r.new_images),
                     *(f"{100 * s.accuracy[k]:.1f}" for k in radii), f"{s.acr:.3f}",
                     _flops(getattr(s, "flops_per_image", None)),
                     "-" if s.seconds is None else f"{s.seconds:.3f}"])
    headers = ["FLOPs budget" if by_flops else "budget", "N", "m", "run", "new",
               *(f"{k:g}" for k in radii), "ACR", "FLOPs/img", "s/img"]
    table = tabulate(body, headers=headers, disable_numparse=True,
                     colalign=("right", "right", "right", "left", *["right"] * (len(radii) + 4)))
    folders = "\n".join(f"results: {r.folder / 'certs.tsv'}" for r in results)
    return "\n".join([head, table, folders])


def _flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
