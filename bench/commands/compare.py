"""``python -m bench compare``: certify methods at one budget of N x m predictions per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.common import common_registry, param

HELP = "same-compute comparison of methods at a fixed budget of N x m predictions per image"


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
    p.add_argument("--dataset", default="digits")
    p.add_argument("--budget", type=int, required=True,
                   help="predictions per image, N x m (N = budget // m for each method)")
    p.add_argument("--methods", type=name_list, default=["dds", "diffsmooth"],
                   help="comma-separated methods (default dds,diffsmooth)")
    p.add_argument("--m", type=int_list, default=[5, 10, 20],
                   help="values of m for methods with an m param (default 5,10,20)")
    p.add_argument("--baseline", default=None, help="a method certified with N = budget, "
                   "e.g. gaussian")
    p.add_argument("--sigma", type=float, default=0.25, help="noise std in [0,1] pixel units")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1024, help="noisy samples per forward pass")
    p.add_argument("--subset", default="full")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--param", type=param, action="append", default=[],
                   help="a param override for every method: KEY=VALUE (repeatable)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    common_registry(p)


def run(args) -> int:
    from bench.compare import CompareOptions, compare, describe, format_table, save_markdown
    from bench.runner import RunOptions

    base = RunOptions(
        dataset=args.dataset, sigma=args.sigma, n0=args.n0, alpha=args.alpha, batch=args.batch,
        subset=args.subset, max_images=args.max_images, seed=args.seed, device=args.device,
        results=args.results, data_dir=args.data_dir, models_dir=args.models_dir,
        registry=args.registry, extra_registries=tuple(args.extra_registry),
        params=dict(args.param), progress=not args.quiet,
    )
    opts = CompareOptions(dataset=args.dataset, budget=args.budget, methods=args.methods,
                          ms=args.m, baseline=args.baseline, base=base)
    rows = compare(opts)
    print(describe(opts, rows))
    print(format_table(rows))
    if args.markdown:
        save_markdown(args.markdown, opts, rows)
        print(f"table: {args.markdown}")
    return 0
