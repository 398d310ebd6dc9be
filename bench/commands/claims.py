"""``python -m bench claims FILE``: papers' claims checked on the same images, a paired test and
a verdict each (:mod:`bench.reports.claims`)."""

from __future__ import annotations

from pathlib import Path

from bench.errors import ConfigError

HELP = "check papers' claims (a YAML file of run pairs) with paired tests on the same images"


def add_arguments(p) -> None:
    p.add_argument("claims", type=Path, help="claims file (YAML; see docs/claims.md), e.g. "
                                             "claims/fashion-mnist.yaml")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="where the runs are: a --results folder (its store, read-only) or a "
                        "folder of exported runs such as leaderboards")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.reports.claims import check, load_claims, render
    from bench.store.exports import open_results

    dataset, claims = load_claims(args.claims)
    store = open_results(args.results)  # read-only: never creates or changes a store
    if store is None:
        raise ConfigError(f"no results store or exported runs in {args.results}; run "
                          "'python -m bench run' first or pass --results DIR")
    try:
        print(render(check(store, dataset, claims), markdown=args.markdown))
    finally:
        store.close()
    return 0
