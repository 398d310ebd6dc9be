"""What the CLI prints besides results: help, did-you-mean, logging levels, progress lines."""

from __future__ import annotations

import argparse
import io
import logging

import pytest

from bench.cli import build_parser, closest, hinted, plain
from bench.commands import COMMANDS
from bench.progress import LineProgress, progress

# Subcommands whose modules other work in progress owns: their options without help are
# reported as expected failures until that lands (then remove them from here).


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_is_for_users(cli):
    code, out, _ = cli("--help")
    assert code == 0
    assert out.startswith("usage: python -m bench")
    assert "certified L2 robustness by randomized smoothing" in out
    assert "examples:" in out and "python -m bench run --method gaussian" in out
    for name in ("run", "table", "download", "list"):
        assert f"\n    {name} " in out  # one line per command
    assert "No certification logic" not in out and "``" not in out
    assert "-q, --quiet" in out and "-v, --verbose" in out


def test_no_subcommand_prints_the_help(cli):
    code, out, _ = cli()
    assert code == 0 and "examples:" in out


@pytest.mark.parametrize("name", sorted(subparsers()))
def test_every_option_has_help(name):
    parser = subparsers()[name]
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.help is not argparse.SUPPRESS
               and not (a.help or "").strip()]
    assert not missing, f"'{name}' options without help: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(subparsers()))
def test_help_is_plain_text(name):
    text = subparsers()[name].format_help()
    for markup in ("``", ":func:`", ":mod:`", ":class:`"):
        assert markup not in text, f"{name} --help shows RST {markup!r}"


def test_defaults_are_shown(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "(default: 1024)" in flat  # --batch
    assert "(default: gaussian)" in flat and "(default: digits)" in flat
    assert "(default: 0)" in flat  # --seed
    assert "(default: results)" in flat
    assert "(default 100) (default" not in flat  # a help that states its default keeps it


def test_plain_strips_rst():
    text = plain("""Use ``python -m bench run`` (see :func:`bench.evaluate` and
    :mod:`bench.store`), stored as *claimed* runs.

    Example::

        python -m bench run --n 10
    """)
    assert text.startswith("Use python -m bench run (see bench.evaluate and "
                           "bench.store), stored as claimed runs.")
    assert "Example:\n\n    python -m bench run --n 10" in text
    assert "``" not in text and ":func:" not in text


RUN = ("run", "--dataset", "digits", "--subset", "dev", "--n", "10", "--n0", "5",
       "--max-images", "1", "--quiet")


@pytest.mark.parametrize("args, expected", [
    (("--method", "gausian"), "did you mean 'gaussian'?"),
    (("--dataset", "cifar"), "did you mean 'cifar10'?"),
    (("--subset", "deev"), "did you mean 'dev'?"),
    (("--model", "digits-cnn-gausian-0.25"), "did you mean 'digits-cnn-gaussian-0.25'?"),
    (("--procedure", "cohn"), "did you mean 'cohen'?"),
    (("--certification", "seq"), "did you mean 'sequential'?"),
    (("--protocol", "seq"), "did you mean 'sequential'?"),  # --certification's first name
    (("--method", "dummy", "--param", "labl=1"), "did you mean 'label'?"),
], ids=["method", "dataset", "subset", "model", "procedure", "certification", "protocol",
        "param"])
def test_did_you_mean_on_run(cli, tmp_path, args, expected):
    code, out, err = cli(*RUN, "--results", tmp_path, *args)
    assert code == 2, out
    assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("args, expected", [
    (("table", "--dataset", "cifar"), "did you mean --dataset cifar10?"),
    (("rnu",), "did you mean 'run'?"),
    (("table", "--format", "latx"), "did you mean 'latex'?"),
    (("train", "--method", "gausian"), "did you mean 'gaussian'?"),
    (("compare", "--budget", "10", "--methods", "dd"), "did you mean 'dds'?"),
    (("import", "--tsv", "x.tsv", "--method", "m", "--dataset", "mnsit", "--sigma", "0.5"),
     "did you mean 'mnist'?"),
    (("download", "digits-cnn-gausian-0.25"), "did you mean 'digits-cnn-gaussian-0.25'?"),
], ids=["table-dataset", "command", "choice", "train-method", "compare-methods",
        "import-dataset", "download-model"])
def test_did_you_mean_elsewhere(cli, tmp_path, args, expected):
    code, out, err = cli(*args, *(("--results", tmp_path) if args[0] == "table" and
                                  "--format" not in args else ()))
    assert code == 2, out
    assert err.count("\n") == 1 and expected in err, err


def test_hint_helpers():
    assert closest("seq", ["fixed", "sequential"]) == "sequential"
    assert closest("CIFAR10", ["cifar10", "mnist"]) == "cifar10"
    assert closest("zzz", ["cifar10", "mnist"]) is None
    assert hinted("unknown x 'a' (did you mean 'b'?); valid: b") == \
        "unknown x 'a' (did you mean 'b'?); valid: b"  # never twice
    assert hinted("dataset 'digits' has no subset 'fulll'; valid: full, dev") == \
        "dataset 'digits' has no subset 'fulll' (did you mean 'full'?); valid: full, dev"
    assert hinted("nothing to see") == "nothing to see"


@pytest.mark.parametrize("argv, level", [
    (("list",), logging.WARNING), (("-v", "list"), logging.INFO),
    (("list", "--verbose"), logging.INFO), (("-vv", "list"), logging.DEBUG),
    (("--quiet", "list"), logging.ERROR), (("list", "-q"), logging.ERROR),
])
def test_quiet_and_verbose_set_the_log_level(cli, argv, level):
    code, _, err = cli(*argv)
    assert code == 0, err
    assert logging.getLogger("certbench").level == level


def test_quiet_and_verbose_contradict(cli):
    code, _, err = cli("--quiet", "list", "--verbose")
    assert code == 2 and "contradict" in err and err.count("\n") == 1


def test_log_lines_go_to_stderr(cli, capsys):
    cli("list")  # configures the logger
    logging.getLogger("certbench.test").warning("careful: %s", "this")
    logging.getLogger("certbench.test").info("not shown at the default level")
    err = capsys.readouterr().err
    assert err == "certbench: careful: this\n"


def test_top_level_quiet_silences_run_progress(cli, tmp_path):
    code, _, err = cli("--quiet", "run", "--method", "dummy", "--n", "100", "--max-images", "3",
                       "--results", tmp_path)
    assert code == 0, err
    assert err == ""


def test_short_quiet_after_run_is_accepted(cli, tmp_path):
    code, _, err = cli("run", "--method", "dummy", "--n", "100", "--max-images", "3",
                       "--results", tmp_path, "-q")
    assert code == 0, err
    assert err == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_short_quiet_and_verbose(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "-q, --quiet" in out and "-v, --verbose" in out


def test_run_progress_off_a_terminal_is_plain_lines(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CERTBENCH_PROGRESS", raising=False)
    code, _, err = cli("run", "--method", "dummy", "--n", "100", "--max-images", "20",
                       "--results", tmp_path)
    assert code == 0, err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if "images" in line]
    assert 1 <= len(lines) <= 11, err  # every 10% at most (and every 30 s)
    assert lines[-1].startswith("certbench: dummy/digits sigma=0.25: 20/20 images (100%)")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_picks_a_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("CERTBENCH_PROGRESS", raising=False)
    assert not isinstance(progress(total=3, file=FakeTerminal()), LineProgress)
    assert isinstance(progress(total=3, file=io.StringIO()), LineProgress)
    monkeypatch.setenv("CERTBENCH_PROGRESS", "lines")
    assert isinstance(progress(total=3, file=FakeTerminal()), LineProgress)
    monkeypatch.setenv("CERTBENCH_PROGRESS", "bar")
    assert not isinstance(progress(total=3, file=io.StringIO()), LineProgress)


def test_disabled_progress_writes_nothing(monkeypatch):
    monkeypatch.setenv("CERTBENCH_PROGRESS", "lines")
    out = io.StringIO()
    bar = progress(total=5, file=out, disable=True)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_line_progress_every_tenth_and_every_interval():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(total=360, desc="gaussian/digits sigma=0.25", unit="img", file=out,
                       interval=30, clock=lambda: now[0])
    for _ in range(360):
        now[0] += 0.1
        bar.update(1)
        bar.set_postfix(samples_per_s="5,000")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10%, 20%, ... 100%; close adds nothing new
    assert lines[2] == ("certbench: gaussian/digits sigma=0.25: 108/360 images (30%), "
                        "10.0 img/s, eta 25 s, samples_per_s=5,000")
    assert lines[-1].startswith("certbench: gaussian/digits sigma=0.25: 360/360 images (100%)")
    assert "done in 36 s" in lines[-1]

    slow, out = [0.0], io.StringIO()
    bar = LineProgress(total=1000, unit="img", file=out, interval=30, clock=lambda: slow[0])
    for _ in range(5):
        slow[0] += 31
        bar.update(1)  # 0.5%: no tenth crossed, but 30 s passed each time
    assert len(out.getvalue().splitlines()) == 5
    bar.total = 10  # the runner shrinks the total when others take images
    bar.refresh()
    bar.update(1)
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("certbench: 6/10 images (60%)")


def test_line_progress_iterates_like_tqdm():
    out = io.StringIO()
    seen = list(LineProgress(range(3, 10), total=10, initial=3, unit="epoch", desc="train",
                             file=out))
    assert seen == list(range(3, 10))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("certbench: train: 4/10 epochs (40%)")
    assert lines[-1].startswith("certbench: train: 10/10 epochs (100%)")


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """``python -m bench list | head``: no BrokenPipeError traceback, exit status 0 (``true``
    reads nothing: the pipe is closed before the first write)."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m bench list | true; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and proc.stdout.strip() == "0", proc.stderr
