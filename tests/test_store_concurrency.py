"""The store under concurrency, and runs that fail before their first certificate.

Processes on one run share its images (claims), run creation is atomic, exports never
collide, a dead process's claims are taken over, and neither a batch too large for memory nor
an error on the first image leaves a run row behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from bench.certify.procedures.cohen import CohenFixedN
from bench.certify.records import Certificate, RunCard
from bench.errors import ConfigError, ModelError
from bench.running import memory, plan
from bench.running.plan import RunOptions
from bench.running.runner import run
from bench.store.database import DB_NAME, Store, claim_is_stale, write_json
from tests.conftest import ROOT

HOST = socket.gethostname()
IDENTITY = {"method": "gaussian", "dataset": "digits", "sigma": 0.25, "n0": 10, "n": 100,
            "m": 1, "alpha": 0.001, "subset": "dev", "subset_size": 3}


def _cert(idx):
    return Certificate(prediction=1, radius=0.5, p_lower=0.9, top_class=1, count=90, n0=10,
                       n=100, idx=idx, label=1, device="cpu")


def _rows(results, table):
    with sqlite3.connect(results / DB_NAME) as con:
        return con.execute(f"SELECT * FROM {table}").fetchall()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no such process any more
    return proc.pid


def _strip(certs):
    return [dataclasses.replace(c, seconds=0.0) for c in certs]


# ----- (a) two processes on one run certify each image once ---------------------------------
@pytest.mark.parametrize("images", [
    pytest.param(12, id="12-images"),
    pytest.param(None, id="whole-dev-subset", marks=pytest.mark.slow),
])
def test_two_processes_on_one_run_certify_each_image_once(tmp_path, images):
    """Two identical commands started at once split the subset: the 'N new' counts of the two
    add up to the images asked for (an image certified by both would count twice), and the
    certificates are those of one process alone."""
    shared = tmp_path / "shared"
    cmd = [sys.executable, "-m", "bench", "run", "--method", "gaussian", "--dataset", "digits",
           "--subset", "dev", "--n", "200", "--n0", "20", "--results", str(shared), "--quiet"]
    cmd += ["--max-images", str(images)] if images else []
    total = images or 50
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    news = [int(re.search(rf"dev: {total}/50 images, (\d+) new", out).group(1))
            for out, _ in outs]
    assert sum(news) == total, news
    assert _rows(shared, "claims") == []  # released at exit
    alone = run(RunOptions(method="gaussian", dataset="digits", subset="dev", n=200, n0=20,
                           max_images=images, results=tmp_path / "alone", progress=False))
    assert alone.new_images == total
    a, b = Store(shared), Store(tmp_path / "alone")
    try:
        assert [r.run_id for r in a.runs_of()] == [alone.run_id]
        assert _strip(a.certs(alone.run_id)) == _strip(b.certs(alone.run_id))
    finally:
        a.close()
        b.close()
    # Both processes exported after every image was certified: complete, identical files.
    folder = next((shared / "runs").iterdir())
    assert len((folder / "certs.tsv").read_text().splitlines()) == total + 1
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----- (b) concurrent open_run --------------------------------------------------------------
_OPEN_RUN = """
import json, sys
from bench.certify.records import RunCard
from bench.store.database import Store
s = Store(sys.argv[1])
print(s.open_run(RunCard(identity=json.loads(sys.argv[2]))))
s.close()
"""


def test_concurrent_open_run_of_one_card_never_raises(tmp_path):
    """Threads and processes opening the same card on a new store at once get one run."""
    results = tmp_path / "res"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_RUN, str(results),
                               json.dumps(IDENTITY)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    ids, errors = [], []
    barrier = threading.Barrier(8)

    def open_one():
        try:
            barrier.wait()
            store = Store(results)
            ids.append(store.open_run(RunCard(identity=dict(IDENTITY))))
            store.close()
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [p.communicate(timeout=60) for p in procs]
    assert not errors
    assert all(p.returncode == 0 for p in procs), outs
    ids += [out.strip() for out, _ in outs]
    assert len(ids) == 12 and set(ids) == {RunCard(identity=IDENTITY).run_id}
    assert len(_rows(results, "runs")) == 1


def test_open_run_refuses_a_stored_row_with_another_identity(tmp_path):
    from bench.errors import StoreError

    store = Store(tmp_path)
    card = RunCard(identity=dict(IDENTITY))
    store.open_run(card)
    store.db.execute("UPDATE runs SET card = ?", (json.dumps({"identity": {"x": 1}}),))
    store.db.commit()
    with pytest.raises(StoreError, match="exists with a different run card"):
        store.open_run(card)
    store.close()


# ----- (c) concurrent exports ---------------------------------------------------------------
def test_concurrent_exports_do_not_collide(tmp_path):
    store = Store(tmp_path)
    run_id = store.open_run(RunCard(identity=dict(IDENTITY)))
    store.add_certs(run_id, [_cert(i) for i in range(3)])
    store.close()
    errors = []
    barrier = threading.Barrier(6)

    def export_many():
        try:
            s = Store(tmp_path)
            barrier.wait()
            for _ in range(15):
                s.export(run_id)
            s.close()
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=export_many) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (folder,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["certs.tsv", "summary.json"]
    assert len((folder / "certs.tsv").read_text().splitlines()) == 4
    assert json.loads((folder / "summary.json").read_text())["images"]["certified"] == 3


def test_write_json_replaces_atomically_under_concurrent_writers(tmp_path):
    path = tmp_path / "out" / "summary.json"
    errors = []

    def write(k):
        try:
            for i in range(40):
                write_json(path, {"writer": k, "i": i, "pad": "x" * 5000})
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(path.read_text())["i"] == 39
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


# ----- (d) claims: held, stale, taken over ---------------------------------------------------
def test_claims_of_live_owners_are_held_and_stale_ones_are_free(tmp_path):
    store = Store(tmp_path)
    run_id = store.open_run(RunCard(identity=dict(IDENTITY)))
    store.add_cert(run_id, _cert(0))
    now = time.time()
    live = f"{HOST}:{os.getpid()}:other"
    dead = f"{HOST}:{_dead_pid()}:gone"
    store.db.executemany("INSERT INTO claims VALUES (?, ?, ?, ?)", [
        (run_id, 1, live, now), (run_id, 2, dead, now),
        (run_id, 3, "elsewhere:12:abc", now), (run_id, 4, "elsewhere:12:abc", now - 3600)])
    store.db.commit()
    assert not claim_is_stale(live, now) and claim_is_stale(dead, now)
    assert not claim_is_stale("elsewhere:12:abc", now)
    assert claim_is_stale("elsewhere:12:abc", now - 3600)
    got = store.claim(run_id, [0, 1, 2, 3, 4, 5], "me:1:x", limit=10)
    assert got.claimed == [2, 4, 5] and got.done == {0} and got.held == [1, 3]
    got = store.claim(run_id, [0, 1, 2, 3, 4, 5], "you:2:y", limit=10)
    assert got.claimed == [] and got.held == [1, 2, 3, 4, 5]  # "me" is on another host, fresh
    got = store.claim(run_id, [1, 2, 3, 4, 5], "me:1:x", limit=1)  # its own claims stay its
    assert got.claimed == [2]
    store.add_cert(run_id, _cert(2))  # a certificate ends its claim
    assert {row[1] for row in store.claims(run_id)} == {1, 3, 4, 5}
    store.release("me:1:x")
    assert {row[1] for row in store.claims(run_id)} == {1, 3}
    store.close()


def test_a_dead_process_claims_are_taken_over_on_resume(tmp_path):
    """A run killed mid-way leaves claims behind; the rerun takes them over."""
    opts = RunOptions(n=200, n0=20, max_images=4, results=tmp_path, progress=False)
    prep = plan.prepare(opts)
    store = Store(tmp_path)
    dead = f"{HOST}:{_dead_pid()}:killed"
    store.db.executemany("INSERT INTO claims VALUES (?, ?, ?, ?)",
                         [(prep.card.run_id, idx, dead, time.time())
                          for idx in prep.indices[:3]])
    store.db.commit()
    store.close()
    result = run(opts)
    assert result.new_images == 4 and result.summary.images == 4
    assert _rows(tmp_path, "claims") == []


def test_a_run_waits_for_images_a_live_process_holds_and_takes_them_when_it_dies(tmp_path):
    opts = RunOptions(n=200, n0=20, max_images=3, results=tmp_path, progress=False)
    prep = plan.prepare(opts)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    reaper = threading.Thread(target=holder.wait)  # reaped as it exits: then it is dead
    reaper.start()
    store = Store(tmp_path)
    store.db.execute("INSERT INTO claims VALUES (?, ?, ?, ?)",
                     (prep.card.run_id, prep.indices[0], f"{HOST}:{holder.pid}:busy",
                      time.time()))
    store.db.commit()
    store.close()
    start = time.perf_counter()
    result = run(opts)
    reaper.join()
    assert time.perf_counter() - start >= 1.0  # it waited for the holder
    assert result.new_images == 3 and result.summary.images == 3


# ----- (e) the allocation guard -------------------------------------------------------------
def test_an_allocation_failure_is_one_line_exit_2_and_leaves_no_run(cli, tmp_path,
                                                                    monkeypatch):
    from bench.certify import smoothing

    def fill(self, out):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 8192000000 bytes. "
                           "Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(smoothing.NoiseStream, "fill", fill)
    code, _, err = cli("run", "--n", 2000, "--max-images", 3, "--batch", 1000,
                       "--results", tmp_path, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--batch 1000 does not fit in memory" in err and "allocating 8192000000 bytes" in err
    assert "use a smaller --batch" in err
    assert _rows(tmp_path, "runs") == [] and _rows(tmp_path, "claims") == []


def test_a_batch_too_large_for_memory_is_reduced_and_said(cli, tmp_path, monkeypatch):
    """The estimate exceeds the memory available: the batch is lowered before the run (one
    line on stderr), and the certificates are those of the batch asked for."""
    code, _, err = cli("run", "--n", 2000, "--max-images", 2, "--batch", 2000,
                       "--results", tmp_path / "whole", "--quiet")
    assert code == 0 and "batch" not in err
    per_sample = 4 * memory.MEMORY_FACTOR * 64  # digits: 64 floats per image
    monkeypatch.setattr(memory, "available_memory", lambda device: 500 * per_sample)
    code, _, err = cli("run", "--n", 2000, "--max-images", 2, "--batch", 2000,
                       "--results", tmp_path / "small", "--quiet")
    assert code == 0, err
    (line,) = err.splitlines()
    assert "--batch 2000 would need" in line and "using --batch 250" in line
    certs = []
    for d in ("whole", "small"):
        s = Store(tmp_path / d)
        (r,) = s.runs_of()
        certs.append(_strip(s.certs(r.run_id)))
        s.close()
    assert certs[0] == certs[1] and len(certs[0]) == 2
    # A batch within the estimate is kept as asked.
    code, _, err = cli("run", "--n", 200, "--max-images", 2, "--batch", 2000,
                       "--results", tmp_path / "small", "--quiet")
    assert code == 0 and err == ""


def test_a_single_sample_too_large_for_memory_is_refused_before_the_run(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="one noisy sample needs"):
        plan.prepare(RunOptions(n=200, results=tmp_path))
    assert not (tmp_path / DB_NAME).exists()


def test_out_of_memory_errors_are_recognised():
    import torch

    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to "
                                                          "allocate 2.00 GiB"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not memory.is_out_of_memory(ValueError("out of memory"))


# ----- (f) an error on the first image leaves no run ----------------------------------------
def test_an_error_on_the_first_image_leaves_no_run_row(cli, tmp_path, monkeypatch):
    real = CohenFixedN.certify
    calls = []

    def failing(self, x, idx, label, fail_at=1):
        calls.append(idx)
        if len(calls) >= fail_at:
            raise ModelError(f"the base classifier returned NaN for image {idx}")
        return real(self, x, idx, label)

    monkeypatch.setattr(CohenFixedN, "certify", failing)
    code, _, err = cli("run", "--n", 200, "--max-images", 3, "--results", tmp_path, "--quiet")
    assert code == 2 and "NaN" in err and err.count("\n") == 1
    assert _rows(tmp_path, "runs") == [] and _rows(tmp_path, "claims") == []
    assert not (tmp_path / "runs").exists()
    # An error after the first certificate keeps what is certified (a rerun resumes).
    calls.clear()
    monkeypatch.setattr(CohenFixedN, "certify",
                        lambda self, x, idx, label: failing(self, x, idx, label, fail_at=3))
    code, _, err = cli("run", "--n", 200, "--max-images", 3, "--results", tmp_path, "--quiet")
    assert code == 2
    assert len(_rows(tmp_path, "runs")) == 1 and len(_rows(tmp_path, "certs")) == 2
    monkeypatch.setattr(CohenFixedN, "certify", real)
    code, out, _ = cli("run", "--n", 200, "--max-images", 3, "--results", tmp_path, "--quiet")
    assert code == 0 and "3/360 images, 1 new" in out


def test_an_empty_shard_writes_no_run(tmp_path):
    """Nothing to certify is a normal outcome (the CLI says so and exits 0), never an empty run:
    the API says so with EmptyShard before any store exists."""
    from bench.running.runner import EmptyShard

    with pytest.raises(EmptyShard, match="holds no images"):
        run(RunOptions(n=200, subset="dev", shard=(60, 100), results=tmp_path, progress=False))
    assert not (tmp_path / "certbench.sqlite").exists()
