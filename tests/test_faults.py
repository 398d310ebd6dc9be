"""Faults: a run killed with SIGKILL at random moments, again and again, ends with exactly the
certificates of an uninterrupted run (none lost, none twice); and shards certified in separate
stores merge into the unsharded run's files, a missing shard reported as a gap.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bench.store.database import DB_NAME
from tests.conftest import ROOT

# Wall-clock columns of certs.tsv: the only ones that may differ between two runs.
TIMING_COLUMNS = ("time",)
KILL_RUN = ["run", "--method", "gaussian", "--dataset", "digits", "--n", "300", "--n0", "100",
            "--quiet"]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _bench(*args):
    return [sys.executable, "-m", "bench", *map(str, args)]


def _certs_tsv(results):
    (folder,) = (results / "runs").iterdir()
    return folder / "certs.tsv"


def _without_timing(path):
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name not in TIMING_COLUMNS]
    return ["\t".join(line[i] for i in keep) for line in lines]


def _count(db) -> int:
    """Certificates stored so far, read without creating or locking anything for long."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    try:
        return con.execute("SELECT COUNT(*) FROM certs").fetchone()[0]
    except sqlite3.Error:  # not created yet, or its schema is being written
        return 0
    finally:
        con.close()


def _kill_loop(tmp_path, kills: int, images: int, seed: int, budget_s: float | None = None,
               min_kills: int = 1):
    """Run ``images`` images uninterrupted into A (concurrently) and, into B, start the same
    command and SIGKILL it ``kills`` times at seeded random moments: a quarter at a delay from
    its start (imports, model, store opening), the rest a random delay after it stored a new
    certificate (in the middle of certifying, often inside a commit); then let it finish.
    With ``budget_s``, no kill starts after that many seconds once ``min_kills`` were done
    (each kill costs a process start: a few seconds, more on a busy machine)."""
    rng = random.Random(seed)
    start = time.monotonic()
    cmd = [*KILL_RUN, "--max-images", images]
    a, b = tmp_path / "a", tmp_path / "b"
    whole = subprocess.Popen(_bench(*cmd, "--results", a), cwd=ROOT, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = b / DB_NAME
    log = []
    for k in range(kills):
        if budget_s is not None and k >= min_kills and time.monotonic() - start > budget_s:
            break
        before = _count(db)
        proc = subprocess.Popen(_bench(*cmd, "--results", b), cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.25:
            delay, kind = rng.uniform(0.0, 4.0), "from start"
            time.sleep(delay)
        else:
            delay, kind = rng.uniform(0.0, 0.05), "after a commit"
            deadline = time.monotonic() + 60
            while (proc.poll() is None and _count(db) <= before
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.append((kind, round(delay, 3), before, _count(db), finished))
        if finished:  # it certified everything before the kill came
            break
    rest = subprocess.run(_bench(*cmd, "--results", b), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    assert rest.returncode == 0, rest.stderr
    print(f"\n{len(log)} kills (kind, delay s, stored before, stored after, had finished):")
    for entry in log:
        print("  ", entry)
    print(f"final run: {rest.stdout.splitlines()[0]}")
    return a, b, log, rest


def _check_same_as_uninterrupted(a, b, images: int):
    assert _without_timing(_certs_tsv(b)) == _without_timing(_certs_tsv(a))
    with sqlite3.connect(b / DB_NAME) as con:
        idx = [r[0] for r in con.execute("SELECT idx FROM certs ORDER BY idx")]
        assert len(idx) == images and len(set(idx)) == images  # none lost, none twice
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with sqlite3.connect(a / DB_NAME) as con:
        assert idx == [r[0] for r in con.execute("SELECT idx FROM certs ORDER BY idx")]


@pytest.mark.heavy
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    images = 24
    a, b, log, rest = _kill_loop(tmp_path, kills=8, images=images, seed=20240601,
                                 budget_s=20.0, min_kills=4)
    _check_same_as_uninterrupted(a, b, images)
    assert len(log) >= 4 and not any(done for *_, done in log), log  # all before the end
    assert sum(after > before for _, _, before, after, _ in log) >= 2, log  # mid-run kills
    assert log[-1][3] < images  # the last process left work for the final run


@pytest.mark.slow
def test_sigkill_thirty_times_loses_and_duplicates_nothing(tmp_path):
    images = 120
    a, b, log, _ = _kill_loop(tmp_path, kills=30, images=images, seed=7)
    _check_same_as_uninterrupted(a, b, images)
    assert len(log) == 30 and not any(done for *_, done in log), log


# ----- shards in separate stores, merged --------------------------------------------------
SHARD_RUN = ("run", "--method", "gaussian", "--dataset", "digits", "--subset", "dev", "--n", 100,
             "--n0", 10, "--quiet")


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    """``--shard 0/3``, ``1/3`` and ``2/3`` of the dev subset in three stores, and the
    unsharded run in a fourth (in-process, through the command line)."""
    from bench.cli import main

    root = tmp_path_factory.mktemp("three")
    for i in range(3):
        assert main([*map(str, SHARD_RUN), "--shard", f"{i}/3",
                     "--results", str(root / f"shard-{i}")]) == 0
    assert main([*map(str, SHARD_RUN), "--results", str(root / "whole")]) == 0
    return root


def test_three_merged_shards_give_the_unsharded_certs_tsv(three_shards, tmp_path, cli):
    out = tmp_path / "merged"
    srcs = [three_shards / f"shard-{i}" for i in range(3)]
    code, text, err = cli("merge", *srcs, "--results", out)
    assert code == 0, err
    for src, n in zip(srcs, (17, 17, 16), strict=True):  # 50 images: positions 0, 3, ... per shard
        assert f"{src}: {n} merged\n" in text
    assert "50/50 images" in text and "complete: every image of the subset is certified" in text
    assert _without_timing(_certs_tsv(out)) == _without_timing(_certs_tsv(three_shards / "whole"))
    summary = json.loads((_certs_tsv(out).parent / "summary.json").read_text())
    whole = json.loads((_certs_tsv(three_shards / "whole").parent / "summary.json").read_text())
    assert summary["images"] == whole["images"] == {"certified": 50, "subset_size": 50,
                                                    "complete": True}
    assert summary["metrics"] == whole["metrics"]


def test_a_missing_shard_is_reported_as_a_gap_and_merged_later(three_shards, tmp_path, cli):
    out = tmp_path / "merged"
    code, text, err = cli("merge", three_shards / "shard-0", three_shards / "shard-2",
                          "--results", out)
    assert code == 0, err
    # shard 1/3 holds positions 1, 4, ..., 49 of dev (= images 0..49).
    assert "33/50 images" in text
    assert "gaps: 17 of the subset's 50 images certified by no store: 1-49/3" in text
    summary = json.loads((_certs_tsv(out).parent / "summary.json").read_text())
    assert summary["images"]["complete"] is False
    code, text, _ = cli("merge", three_shards / "shard-1", "--results", out)
    assert code == 0 and f"{out} (target): 33 already there" in text and "complete" in text
    assert _without_timing(_certs_tsv(out)) == _without_timing(_certs_tsv(three_shards / "whole"))
