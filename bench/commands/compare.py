"""``python -m bench compare``: certify methods at one budget of N x m predictions per image,
or of forward FLOPs per image (``--budget-flops``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.common import certification_fields, certification_options, flops_amount

HELP = ("same-compute comparison of methods at a fixed budget of N x m predictions, or of "
        "FLOPs, per image")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 5,10,20, got {text!r}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", help="dataset to certify (see 'list')")
    budgets = p.add_mutually_exclusive_group(required=True)
    budgets.add_argument("--budget", type=int, default=None,
                         help="predictions per image, N x m (N = budget // m for each method)")
    budgets.add_argument("--budget-flops", type=flops_amount, default=None, metavar="F",
                         help="forward FLOPs per image, e.g. 3.5e11: each method gets the "
                              "largest N with (N0 + N) x its FLOPs per prediction <= F")
    p.add_argument("--methods", type=name_list, default=["dds", "diffsmooth"],
                   help="comma-separated methods (default dds,diffsmooth)")
    p.add_argument("--m", type=int_list, default=[5, 10, 20],
                   help="values of m for methods with an m param (default 5,10,20)")
    p.add_argument("--baseline", default=None, help="a method certified with N = budget, "
                   "e.g. gaussian")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    certification_options(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.running.compare import CompareOptions, compare, describe, format_table, save_markdown
    from bench.running.plan import RunOptions

    base = RunOptions(**certification_fields(args))
    opts = CompareOptions(dataset=args.dataset, budget=args.budget,
                          budget_flops=args.budget_flops, methods=args.methods,
                          ms=args.m, baseline=args.baseline, base=base)
    rows = compare(opts)
    print(describe(opts, rows))
    print(format_table(rows))
    if args.markdown:
        save_markdown(args.markdown, opts, rows)
        print(f"table: {args.markdown}")
    return 0
