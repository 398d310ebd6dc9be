"""Entry point: ``python -m bench`` (the ``certbench`` console script is bench.cli:console_main)."""

from bench.cli import DEFAULT_PROG, main

raise SystemExit(main(prog=DEFAULT_PROG))
