"""``python -m bench import``: ingest a per-image TSV as *claimed* results.

Reads Cohen's format (``idx label predict radius correct time``), repairs the DDS reference
code's running-count ``correct`` column (and says so), and stores the rows as a claimed run:
shown on tables and leaderboards as claimed, never as reproduced by this harness. Every row is
checked first (indices in the subset or test split, labels in the dataset's classes, radii finite
and at most the largest certifiable radius of --sigma, --n and --alpha): a bad file changes
nothing and fails with one line naming the line, the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path

HELP = "import a Cohen-format per-image TSV as claimed results"


def add_arguments(p) -> None:
    p.add_argument("--tsv", type=Path, required=True,
                   help="the per-image TSV (columns idx label predict radius correct time)")
    p.add_argument("--method", required=True, help="method name shown on the leaderboard")
    p.add_argument("--dataset", required=True, help="dataset the images come from")
    p.add_argument("--sigma", type=float, required=True,
                   help="noise std the file was certified at, in [0,1] pixel units")
    p.add_argument("--n", type=int, default=None,
                   help="estimation samples N the file was certified with (default 100000); "
                        "claimed radii must not exceed the largest one sigma, N and alpha allow")
    p.add_argument("--n0", type=int, default=100,
                   help="selection samples N0 the file was certified with")
    p.add_argument("--m", type=int, default=1, help="predictions per noisy sample (DiffSmooth)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="failure probability the file was certified at")
    p.add_argument("--subset", default="claimed", help="named subset the images come from")
    p.add_argument("--source", default="", help="where the file comes from (paper, URL)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results folder to store the claimed run in")


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.store.tsv_import import ImportOptions, import_tsv

    result = import_tsv(ImportOptions(
        tsv=args.tsv, method=args.method, dataset=args.dataset, sigma=args.sigma, n=args.n,
        n0=args.n0, m=args.m, alpha=args.alpha, subset=args.subset, source=args.source,
        results=args.results))
    for note in result.notes:
        print(note)
    print(f"imported {result.images} images as claimed run {result.run_id} "
          f"({args.method} on {args.dataset}, sigma {args.sigma:g})")
    print(f"results: {result.folder / 'certs.tsv'}  {result.folder / 'summary.json'}")
    return 0
