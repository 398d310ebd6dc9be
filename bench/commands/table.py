"""``python -m bench table``: the standardized certified-accuracy table of one dataset.

One row per run in the store (reproduced and claimed) plus the registry's reported rows; the
best value per radius is marked within each comparison group (dataset, subset, alpha, budget), with
the rows not significantly different from it (paired exact tests on the same images, level
0.05), then the best-over-sigma envelope per configuration. Certified accuracy carries an
exact 95% Clopper-Pearson interval over the image sample.

``--radii`` chooses the radius columns (values off a run's grid are computed exactly from its
per-image radii; rows without per-image data show n/a there), ``--columns`` the others, and
``--format long`` writes tidy CSV: one line per row x radius.
"""

from __future__ import annotations

from pathlib import Path

from bench.commands.common import common_registry
from bench.errors import ConfigError
from bench.registry.entries import load_registry

HELP = "print the standardized table of a dataset (markdown, latex, csv or long csv)"

# The names of bench.reports.table.COLUMNS (kept here so that --help needs no pandas; a test
# checks).
COLUMN_NAMES = ("method", "kind", "dataset", "sigma", "n0", "n", "m", "alpha", "budget",
                "subset", "images", "certification", "run", "setting", "acr", "abstain",
                "passes", "seconds", "device", "source")
DEFAULT_COLUMN_NAMES = "method,kind,sigma,n0,n,m,alpha,subset,acr,abstain,passes,seconds,device"


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="digits", help="dataset whose runs to tabulate")
    p.add_argument("--format", choices=("markdown", "latex", "csv", "long"), default="markdown",
                   help="markdown, latex (booktabs), csv (one line per row, with the column "
                        "names and fractions of bench.load_results: acc@R, ci_low@R, mark@R, "
                        "...), or long: tidy CSV with one line per row x radius")
    p.add_argument("--radii", default=None, metavar="R1,R2,...",
                   help="radius columns to show (default: the union of the runs' grids); a "
                        "radius off a run's grid is computed exactly from its per-image radii, "
                        "rows without per-image data (the papers' reported rows) show n/a")
    p.add_argument("--columns", default=None, metavar="NAME,...",
                   help="the non-radius columns, in order, from: " + ", ".join(COLUMN_NAMES)
                        + f" (default: {DEFAULT_COLUMN_NAMES}; csv: all its columns; long: "
                        "all); the radius columns come before the first of acr, abstain, "
                        "passes, seconds, device, source")
    p.add_argument("--budget", type=int, default=None,
                   help="only rows of this budget (N x m predictions per image)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="the results to read: a --results folder (its store, read-only), or a "
                        "folder of exported runs such as leaderboards")
    p.add_argument("--no-reported", action="store_true", help="leave out the papers' numbers")
    p.add_argument("--no-ci", action="store_true", help="no intervals in markdown/latex cells")
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.reports.table import (
        collect_rows,
        grid_of,
        parse_columns,
        parse_table_radii,
        render,
        with_radii,
    )
    from bench.store.exports import open_results

    # Bad --columns or --radii fail before anything is read.
    columns = parse_columns(args.columns) if args.columns is not None else None
    radii = parse_table_radii(args.radii) if args.radii is not None else None
    registry = load_registry(args.registry, extra=args.extra_registry)
    # Reading never creates or changes a store: without a store or exported runs, only the
    # registry's numbers are shown.
    store = open_results(args.results)
    try:
        rows = collect_rows(store, registry, args.dataset, args.budget,
                            reported=not args.no_reported)
    finally:
        if store is not None:
            store.close()
    if not rows:
        raise ConfigError(f"no runs or reported numbers for dataset {args.dataset!r}"
                          + (f" at budget {args.budget:,}" if args.budget else "")
                          + f" in {args.results}; run 'python -m bench run' first")
    if radii is None:
        grid = grid_of(rows, args.dataset)  # each run's own grid; the union of them all
        text = render(rows, args.format, grid, ci=not args.no_ci, columns=columns)
    else:
        text = render(with_radii(rows, radii), args.format, radii, ci=not args.no_ci,
                      columns=columns, missing="n/a")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
