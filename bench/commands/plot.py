"""``python -m bench plot``: paper-ready figures of certified accuracy vs radius.

Each run the filter selects is drawn as the exact step curve of its per-image radii (as Cohen
et al.'s analyze.py, never straight lines between grid radii), up to its N-capped maximum
certifiable radius, marked by a tick on the radius axis. One colour per method (the same in
every figure), one line style per sigma, a legend below the axes that names every curve.
Runs on different image sets or alphas may share a figure: labels and a note say so. The
extension of each --out picks the format (.pdf, .png, .svg). Needs matplotlib:
pip install 'certbench[plot]'.
"""

from __future__ import annotations

from pathlib import Path

from bench.commands.common import common_registry
from bench.errors import ConfigError

HELP = ("draw certified accuracy vs radius as step curves, or (--compute) certified accuracy "
        "and ACR vs FLOPs per image (pdf, png, svg)")


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, help="dataset whose runs to plot")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    p.add_argument("--sigmas", default=None, help="comma-separated sigmas, e.g. 0.25,0.5")
    p.add_argument("--budget", type=int, default=None,
                   help="only runs of this same-compute tier (predictions per image)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the results to read: a --results folder (its store, read-only), or a "
                        "folder of exported runs such as leaderboards")
    p.add_argument("--out", type=Path, action="append", default=None,
                   help="output file, .pdf/.png/.svg (repeatable; default <dataset>-certified"
                        ".pdf)")
    p.add_argument("--title", default=None, help="figure title (default: none)")
    p.add_argument("--max-radius", type=float, default=None,
                   help="right end of the radius axis (default: the largest maximum "
                        "certifiable radius)")
    p.add_argument("--width", type=float, default=3.5, help="plot width in inches (3.5)")
    p.add_argument("--height", type=float, default=2.6,
                   help="plot height in inches (2.6), without the legend below it")
    p.add_argument("--compute", action="store_true",
                   help="certified accuracy at --radii and ACR against FLOPs per image (log "
                        "axis; predictions per image where a run records no FLOPs): a curve "
                        "per method and sigma over its budgets ('bench sweep'), the Pareto "
                        "front marked; prints the FLOPs each method needs for --reach")
    p.add_argument("--radii", default=None, metavar="R1,R2,...",
                   help="with --compute: the radii of the panels (default: three key radii of "
                        "the dataset's grid)")
    p.add_argument("--reach", default=None, metavar="A@R,...",
                   help="with --compute: targets for the table of the compute each method "
                        "needs, certified accuracy A (%%) at radius R, e.g. 80@0.25,50@0.5 "
                        "(default: one per radius, 90%% of the best reached, in 10%% steps)")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plot needs matplotlib: install with "
                          "pip install 'certbench[plot]'") from None
    matplotlib.use("Agg")

    from bench.reports import plot
    from bench.store.exports import open_results

    if args.compute:
        return run_compute(args)
    if args.radii or args.reach:
        raise ConfigError("--radii and --reach apply to --compute")
    outs = plot.check_outputs(args.out or [Path(f"{args.dataset}-certified.pdf")])
    methods, sigmas = plot.parse_methods(args.methods), plot.parse_sigmas(args.sigmas)
    plot.check_size(args.width, args.height)
    store = open_results(args.results)  # read-only: never creates or changes a store
    if store is None:
        raise ConfigError(f"no results store or exported runs in {args.results}; run "
                          "'python -m bench run' first or pass --results DIR")
    known = plot.registry_methods(args.registry, args.extra_registry)  # the colour order
    try:
        runs = plot.select(store, args.dataset, methods=methods, sigmas=sigmas,
                           budget=args.budget)
    finally:
        store.close()
    fig = plot.figure(runs, title=args.title, max_radius=args.max_radius, width=args.width,
                      height=args.height, known_methods=known)
    for path in plot.save(fig, outs):
        print(f"wrote {path}")
    return 0


def run_compute(args) -> int:
    """``plot --compute``: the accuracy-vs-compute figure and the compute-to-reach table."""
    from tabulate import tabulate

    from bench.data.specs import grid_for, parse_radii
    from bench.reports import compute, plot
    from bench.store.exports import open_results

    outs = plot.check_outputs(args.out or [Path(f"{args.dataset}-compute.pdf")])
    methods, sigmas = plot.parse_methods(args.methods), plot.parse_sigmas(args.sigmas)
    plot.check_size(args.width, args.height)
    radii = parse_radii(args.radii) if args.radii else compute.key_radii(grid_for(args.dataset))
    if isinstance(radii, str):
        raise ConfigError("--radii takes radii such as 0.25,0.5 with --compute, not auto")
    radii = list(radii)
    targets = compute.parse_targets(args.reach)
    store = open_results(args.results)
    if store is None:
        raise ConfigError(f"no results store or exported runs in {args.results}; run "
                          "'python -m bench sweep' first or pass --results DIR")
    known = plot.registry_methods(args.registry, args.extra_registry)
    try:
        runs = plot.select(store, args.dataset, methods=methods, sigmas=sigmas,
                           budget=args.budget)
    finally:
        store.close()
    views = compute.views_of(runs, radii)
    if not views:
        raise ConfigError("no configuration has runs at two budgets or more on one image set; "
                          "certify some with 'python -m bench sweep --budgets B1,B2,...'")
    view = views[0]
    if len(views) > 1:
        print(f"certbench: {len(views) - 1} other image set(s) or alpha(s) left out; the "
              f"figure shows the largest ({view.images:,} images, alpha {view.alpha:g})")
    fig = plot.compute_figure(view, title=args.title, width=args.width, height=args.height,
                              known_methods=known)
    for path in plot.save(fig, outs):
        print(f"wrote {path}")
    rows = compute.reach_rows(view, compute.reach_table(view.points,
                                                        targets or compute.default_targets(view)))
    if rows:
        print(f"\n{view.unit} each method needs (the cheapest of its runs that reaches the "
              "target; budgets in between were not certified):")
        print(tabulate([[r["target"], r["method"], r["cost"], r["how"]] for r in rows],
                       headers=["target", "method", view.unit, "run"], disable_numparse=True))
    return 0
