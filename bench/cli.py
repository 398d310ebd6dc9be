"""The command line: parse, call library functions, print. No certification logic lives here.

User mistakes (``CertbenchError``) print one line on stderr and exit 2, never a traceback.
Each subcommand lives in its own module under :mod:`bench.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bench.commands import COMMANDS
from bench.errors import CertbenchError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"certbench: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


# Command names that are not valid module names.
_MODULES = {"import": "import_tsv"}


def _command_module(name: str):
    module = _MODULES.get(name, name.replace("-", "_"))
    return importlib.import_module(f"bench.commands.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name in COMMANDS:
        module = _command_module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error already printed
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _command_module(args.command).run(args)
    except CertbenchError as exc:
        sys.stderr.write(f"certbench: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("certbench: interrupted; finished images are saved, rerun to resume\n")
        return 130
