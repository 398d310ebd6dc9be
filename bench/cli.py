"""The command line: parse, call library functions, print. No certification logic lives here.

User mistakes (``CertbenchError``) print one line on stderr and exit 2, never a traceback; a
name the user typed (method, dataset, subset, model, procedure, choice, subcommand) gets a
did-you-mean when one is close (:func:`hinted`). Each subcommand lives in its own module under
:mod:`bench.commands`; what ``--help`` prints is plain text (:func:`plain` strips the RST of
the modules' docstrings) with every option's default. The program names itself as it was
started: ``python -m bench`` (:mod:`bench.__main__`) or ``certbench`` (the console script,
:func:`console_main`), in ``--help`` and in the ``(see '... --help')`` of errors.

Diagnostics go through the ``certbench`` logger, set up by :func:`configure_logging`: warnings
by default, info with ``-v/--verbose``, errors only with ``-q/--quiet`` (before or after the
subcommand; ``--quiet`` also turns progress off). Progress goes to stderr through
:mod:`bench.progress`: a bar on a terminal, periodic lines elsewhere.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import inspect
import logging
import os
import re
import shlex
import sqlite3
import sys
import textwrap
from collections.abc import Iterable, Sequence

from bench.commands import COMMANDS
from bench.data.specs import dataset_names
from bench.errors import CertbenchError

LOGGER = "certbench"
DESCRIPTION = """\
certbench: certified L2 robustness by randomized smoothing, measured the same way for every
method. It certifies test images with a registered method (or your own model) under one fixed
contract, keeps every per-image certificate in a results folder, and turns the results into
comparable tables, plots and leaderboards."""
EPILOG = """\
examples:
  %(prog)s list                                     methods, datasets, models
  %(prog)s run --method gaussian --dataset digits   certify (results in ./results)
  %(prog)s table --dataset digits                   the certified-accuracy table
  %(prog)s download cohen-cifar10-resnet110-0.25    fetch a registered checkpoint

'%(prog)s COMMAND --help' lists a command's options and their defaults.
-q/--quiet (errors only, no progress) and -v/--verbose (more diagnostics) may come before
or after the command. Progress goes to stderr: a bar on a terminal, else a plain line every
30 s or 10%% of the work (e.g. in SLURM logs); CERTBENCH_PROGRESS=bar or =lines forces one."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"certbench: error: {_choice_hint(message)} "
                         f"(see '{self.prog} --help')\n")
        raise SystemExit(2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (already plain, see :func:`plain`); every option's default
    appended to its help unless the help already states it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or not action.option_strings:
            return text
        default = action.default
        if action.nargs == 0 or default is None or default is argparse.SUPPRESS \
                or (isinstance(default, (list, tuple)) and not default):
            return text  # a flag, or nothing worth showing
        return f"{text} (default: %(default)s)"


_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc|ref|term):"
                   r"`~?([^`<]+?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_TICKS = re.compile(r"(?<![\w`])`([^`]+)`(?![\w`])")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^*\s](?:[^*]*[^*\s])?)\*{1,2}(?![\w*])")


def plain(text: str | None, width: int = 88) -> str:
    """A docstring as plain help text: RST roles, literals and emphasis removed, each prose
    paragraph rewrapped (indented blocks, such as examples, kept as they are)."""
    text = inspect.cleandoc(text or "")
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _TICKS.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = re.sub(r"::$", ":", text, flags=re.M)
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.splitlines()
        if lines and all(line.startswith((" ", "\t")) or not line.strip() for line in lines):
            out.append(para)  # an indented block: verbatim
        else:
            out.append(textwrap.fill(" ".join(line.strip() for line in lines), width))
    return "\n\n".join(out)


# Command names that are not valid module names.
_MODULES = {"import": "import_tsv"}


def _command_module(name: str):
    module = _MODULES.get(name, name.replace("-", "_"))
    return importlib.import_module(f"bench.commands.{module}")


DEFAULT_PROG = "python -m bench"
SCRIPT_PROG = "certbench"


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=_Formatter)
    level = parser.add_mutually_exclusive_group()
    # Own dests: a subcommand's defaults would overwrite the top level's values of the same dest.
    level.add_argument("-q", "--quiet", dest="top_quiet", action="store_true",
                       help="print only errors on stderr: no warnings, no progress")
    level.add_argument("-v", "--verbose", dest="top_verbose", action="count", default=0,
                       help="print more diagnostics on stderr (-vv: debugging detail)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, title="commands",
                                metavar="COMMAND")
    for name in COMMANDS:
        module = _command_module(name)
        # argparse %-formats help strings (not descriptions without a %(prog)s).
        sp = sub.add_parser(name, help=plain(module.HELP).replace("%", "%%"),
                            description=plain(module.__doc__),
                            formatter_class=_Formatter)
        module.add_arguments(sp)
        _logging_options(sp)
    return parser


def _logging_options(p: argparse.ArgumentParser) -> None:
    """-q/--quiet and -v/--verbose after the subcommand too (run, train and compare already
    have their own --quiet, which also turns the progress off)."""
    have = p._option_string_actions
    for short, long in (("-q", "--quiet"), ("-v", "--verbose")):
        _short_form(p, short, long)
    if "--quiet" not in have:
        flags = ["--quiet"] if "-q" in have else ["-q", "--quiet"]
        p.add_argument(*flags, action="store_true",
                       help="print only errors on stderr (no warnings)")
    if "--verbose" not in have:
        flags = ["--verbose"] if "-v" in have else ["-v", "--verbose"]
        p.add_argument(*flags, action="count", default=0,
                       help="print more diagnostics on stderr (-vv: debugging detail)")


def _short_form(p: argparse.ArgumentParser, short: str, long: str) -> None:
    """Give a command's own ``long`` option (run's --quiet) the ``short`` form that the
    top-level help documents for every command, unless the command uses it otherwise."""
    have = p._option_string_actions
    if long in have and short not in have:
        action = have[long]
        action.option_strings.insert(0, short)
        have[short] = action


class _StderrHandler(logging.Handler):
    """Log records as ``certbench: <message>`` lines on the current sys.stderr (pytest swaps
    it), written through tqdm so that a progress bar on the terminal is not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # lazy: the CLI starts without tqdm; only a log line needs it

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: int = 0, quiet: bool = False) -> logging.Logger:
    """The ``certbench`` logger: WARNING, INFO with one -v, DEBUG with two, ERROR if quiet."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("certbench: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False  # one line per message, whatever the root logger does
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    logger.setLevel(level)
    return logger


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
    verbose = max(args.top_verbose, getattr(args, "verbose", 0) or 0)
    quiet = args.top_quiet or bool(getattr(args, "quiet", False))
    if quiet and verbose:
        sys.stderr.write("certbench: error: --quiet and --verbose contradict each other; pass "
                         f"one of them (see '{parser.prog} --help')\n")
        return 2
    if hasattr(args, "quiet"):
        args.quiet = quiet  # the top-level --quiet silences a command's progress too
    log = configure_logging(verbose, quiet)
    log.debug("command line: %s", args.command_line)
    try:
        return _command_module(args.command).run(args)
    except CertbenchError as exc:
        sys.stderr.write(f"certbench: error: {hinted(_one_line(exc), args)}\n")
        return exc.exit_code
    except BrokenPipeError:  # the reader left (``list | head``): not an error of ours
        _silence_stdout()
        return 0
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name the user most likely meant: the only one ``name`` starts (or its
    lowercase form matches), else the closest spelling (difflib), else None."""
    known = [str(k) for k in known]
    if not name or name in known:
        return None
    same_case = [k for k in known if k.lower() == name.lower()]
    if len(same_case) == 1:
        return same_case[0]
    prefixed = [k for k in known if k.lower().startswith(name.lower())]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def _choice_hint(message: str) -> str:
    """argparse's ``invalid choice: 'x' (choose from ...)`` with a did-you-mean."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return message
    close = closest(found.group(1), re.findall(r"'([^']*)'", found.group(2)))
    if not close:
        return message
    return message.replace(f"'{found.group(1)}'", f"'{found.group(1)}' (did you mean "
                           f"'{close}'?)", 1)


def hinted(message: str, args: argparse.Namespace | None = None) -> str:
    """A one-line error with a did-you-mean added where the library left it out: for
    ``... 'NAME' ...; valid: A, B`` messages (subsets, procedures, ...), and for a --dataset
    that is no dataset at all (e.g. ``table --dataset cifar``, which finds no rows)."""
    if "did you mean" in message:
        return message
    head, sep, tail = message.partition("; valid: ")
    names = re.findall(r"'([^']*)'", head)
    if sep and names:
        valid = [v.strip().rstrip(".") for v in re.split(r"[;(]", tail)[0].split(",")]
        close = closest(names[-1], [v for v in valid if v])
        if close:  # at the end of the problem, before the list of valid names
            return f"{head} (did you mean {close!r}?){sep}{tail}"
    dataset = getattr(args, "dataset", None)
    if isinstance(dataset, str) and dataset:
        if dataset not in dataset_names():
            close = closest(dataset, dataset_names())
            if close:
                return _insert(message, dataset, close, flag="--dataset")
    return message


def _insert(message: str, name: str, close: str, flag: str = "") -> str:
    quoted = f"'{name}'"
    hint = f"did you mean {flag + ' ' if flag else ''}{close if flag else repr(close)}?"
    at = message.find(quoted)
    if at < 0:
        return f"{message} ({hint})"
    at += len(quoted)
    return f"{message[:at]} ({hint}){message[at:]}"


def console_main() -> int:
    """The ``certbench`` console script: ``main`` under its own name."""
    return main(prog=SCRIPT_PROG)
