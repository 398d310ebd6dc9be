"""``python -m bench validate``: check a method submission before anyone spends compute.

For each method: the registry schema, the adapter import, its models (resolved and
sha256-checked) and a smoke certification of two images with a tiny N in a temporary
results folder. One line per method, OK or FAIL with the entry and field named.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.commands.common import common_registry

HELP = "check registry entries: schema, adapter, models, a two-image smoke run"


def add_arguments(p) -> None:
    p.add_argument("--method", action="append", default=[],
                   help="only this method (repeatable; default: the methods of the "
                        "--extra-registry files if any, else all)")
    p.add_argument("--dataset", default=None,
                   help="smoke-test dataset (default: digits if registered, else the first)")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke certification")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the smoke dataset's files are (default $CERTBENCH_DATA or "
                        "./data; digits needs none)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where non-zoo checkpoints live (default $CERTBENCH_MODELS or ./models)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size of the smoke run (image-folder datasets)")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.running.validate import validate

    report = validate(args.registry, extra=args.extra_registry, methods=args.method,
                      dataset=args.dataset, smoke=not args.no_smoke, data_dir=args.data_dir,
                      models_dir=args.models_dir, image_size=args.image_size)
    # A failing entry is a user mistake like any other: its line goes to stderr, exit 2.
    for line in report.lines():
        print(line, file=sys.stderr if line.startswith("FAIL") else sys.stdout)
    return 0 if report.ok else 2
