"""The command line: parse, call library functions, print. No certification logic lives here.

User mistakes (``CertbenchError``) print one line on stderr and exit 2, never a traceback.
Each subcommand lives in its own module under :mod:`bench.commands`. The program names itself
as it was started: ``python -m bench`` (:mod:`bench.__main__`) or ``certbench`` (the console
script, :func:`console_main`), in ``--help`` and in the ``(see '... --help')`` of errors.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import shlex
import sqlite3
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


DEFAULT_PROG = "python -m bench"
SCRIPT_PROG = "certbench"


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name in COMMANDS:
        module = _command_module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command line (``argv``, default ``sys.argv[1:]``); returns the exit code.

    ``prog`` is how usage and errors name the program (default ``python -m bench``).
    """
    parser = build_parser(prog or DEFAULT_PROG)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error already printed
        return int(exc.code or 0)
    # The command line as typed, under the program's own name (model cards record it).
    args.command_line = " ".join([parser.prog, *(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else [str(a) for a in argv]))])
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _command_module(args.command).run(args)
    except CertbenchError as exc:
        sys.stderr.write(f"certbench: error: {_one_line(exc)}\n")
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        where = exc.filename or "a path"
        sys.stderr.write(f"certbench: error: {where}: {exc.strerror}; pass a folder (not a "
                         "file) that can be written, e.g. a new --results or --out path\n")
        return 2
    except sqlite3.DatabaseError as exc:
        sys.stderr.write(f"certbench: error: the results store is damaged ({_one_line(exc)}); "
                         "restore it from a copy or pass another --results folder\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"certbench: interrupted; {_RESUME.get(args.command, _RESUME['run'])}\n")
        return 130


# Filesystem mistakes a user makes (a file where a folder goes, no permission, disk full).
_USER_ERRNOS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG}
_RESUME = {
    "run": "finished images are saved, rerun the same command to resume",
    "compare": "finished images are saved, rerun the same command to resume",
    "train": "the last finished epoch is saved, rerun the same command to resume from it",
}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def console_main() -> int:
    """The ``certbench`` console script: ``main`` under its own name."""
    return main(prog=SCRIPT_PROG)
