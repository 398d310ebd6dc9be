"""Budget sweeps: one pass at the largest N stores, at every budget, the very run ``run --budget
B`` stores (same run id, same certificates), resumably and shardably."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.running import sweep as sweep_mod
from bench.running.plan import RunOptions
from bench.running.runner import run
from bench.running.sweep import sweep
from bench.store.database import DB_NAME, Store
from bench.store.merge import certificate_difference

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = [40, 300, 130]  # unsorted on purpose; 300 crosses the batch and noise-chunk sizes


def _opts(results: Path, **kw) -> RunOptions:
    base = dict(method="gaussian", dataset="digits", n0=10, max_images=3, batch=64,
                results=results, progress=False)
    return RunOptions(**{**base, **kw})


def _certs(results: Path, run_id: str):
    store = Store(results, readonly=True)
    try:
        return store.run_card(run_id), store.certs(run_id)
    finally:
        store.close()


def _assert_same_run(a_results: Path, b_results: Path, run_id: str) -> None:
    """Same card identity and budget block, and the same certificates (wall time and device
    text aside, as merge compares them)."""
    card_a, certs_a = _certs(a_results, run_id)
    card_b, certs_b = _certs(b_results, run_id)
    assert card_a.identity == card_b.identity
    assert card_a.extra["budget"] == card_b.extra["budget"]
    assert card_a.extra["procedure"] == card_b.extra["procedure"]
    assert [c.idx for c in certs_a] == [c.idx for c in certs_b]
    for a, b in zip(certs_a, certs_b, strict=True):
        assert certificate_difference(a, b) is None, (a.idx, certificate_difference(a, b))


@pytest.mark.parametrize("method, params", [
    ("gaussian", {}),
    # DiffSmooth draws noise of its own (fresh local noise: a stream per image and phase) and
    # has m = 3: budgets map to N = B // 3 as run --budget maps them
    ("diffsmooth", {"denoiser": "toy-zero-eps", "m": 3, "local_noise": "fresh"}),
])
def test_each_swept_budget_is_the_run_at_that_budget(method, params, toy_registry, tmp_path,
                                                     monkeypatch):
    monkeypatch.chdir(ROOT)
    opts = _opts(tmp_path / "sweep", method=method, params=params,
                 extra_registries=(toy_registry,))
    results = sweep(opts, BUDGETS)
    assert [r.summary.card.extra["budget"]["requested"] for r in results] == sorted(BUDGETS)
    m = params.get("m", 1)
    assert [r.summary.card.identity["n"] for r in results] == [b // m for b in sorted(BUDGETS)]
    assert len({r.run_id for r in results}) == len(BUDGETS)
    for b, swept in zip(sorted(BUDGETS), results, strict=True):
        # a separate run at that budget, with another batch size, into another store
        alone = run(replace(opts, budget=b, batch=1024, results=tmp_path / f"run{b}"))
        assert alone.run_id == swept.run_id
        _assert_same_run(tmp_path / "sweep", tmp_path / f"run{b}", swept.run_id)
        # and in the sweep's own store, the run finds every image done
        again = run(replace(opts, budget=b))
        assert again.run_id == swept.run_id and again.new_images == 0


def test_a_sweep_completes_runs_certified_before_and_skips_what_is_done(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    opts = _opts(tmp_path / "res")
    before = run(replace(opts, budget=130, max_images=2))  # two images of one budget exist
    calls = []
    real = sweep_mod._certify_image
    monkeypatch.setattr(sweep_mod, "_certify_image",
                        lambda lead, idx, ns: calls.append((idx, list(ns))) or real(lead, idx, ns))
    results = sweep(opts, BUDGETS)
    # images 0 and 1 are certified for the two other budgets only; image 2 for all three
    assert calls == [(0, [40, 300]), (1, [40, 300]), (2, [40, 130, 300])]
    assert results[1].run_id == before.run_id and results[1].new_images == 1
    assert all(r.summary.images == 3 for r in results)
    calls.clear()
    assert [r.new_images for r in sweep(opts, BUDGETS)] == [0, 0, 0] and calls == []


def test_a_sweep_interrupted_mid_way_resumes_to_the_same_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    whole = sweep(_opts(tmp_path / "whole", max_images=5), BUDGETS)
    opts = _opts(tmp_path / "cut", max_images=5)
    real = sweep_mod._certify_image
    done = []

    def dies_at_the_third(lead, idx, ns):
        if len(done) == 2:
            raise KeyboardInterrupt  # as a kill between two images
        done.append(idx)
        return real(lead, idx, ns)

    monkeypatch.setattr(sweep_mod, "_certify_image", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        sweep(opts, BUDGETS)
    store = Store(tmp_path / "cut", readonly=True)
    # each image is committed to every budget's run at once: two images in each run, no claim
    assert [len(store.done_indices(r.run_id)) for r in whole] == [2, 2, 2]
    assert store.claims() == []
    store.close()
    monkeypatch.setattr(sweep_mod, "_certify_image", real)
    resumed = sweep(opts, BUDGETS)
    assert [r.new_images for r in resumed] == [3, 3, 3]
    for r in whole:
        _assert_same_run(tmp_path / "whole", tmp_path / "cut", r.run_id)


def _stored(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM certs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


@pytest.mark.slow  # two process starts and a sweep: about a minute on a busy machine
def test_a_sweep_killed_with_sigkill_resumes_to_the_same_runs(tmp_path):
    """A real kill (SIGKILL, at any point of a commit) of ``bench sweep``: rerun, the runs
    equal those of an uninterrupted sweep, image for image."""
    args = ["sweep", "--methods", "gaussian", "--budgets", "200,2000", "--n0", "10",
            "--max-images", "12", "--batch", "64", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def bench(results: Path) -> list[str]:
        return [sys.executable, "-m", "bench", *args, "--results", str(results)]

    subprocess.run(bench(tmp_path / "whole"), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    db = tmp_path / "cut" / DB_NAME
    proc = subprocess.Popen(bench(tmp_path / "cut"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _stored(db) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < _stored(db) < 24, "the kill came before the first or after the last image"
    out = subprocess.run(bench(tmp_path / "cut"), cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    whole = Store(tmp_path / "whole", readonly=True)
    run_ids = [r.run_id for r in whole.runs_of("digits")]
    whole.close()
    assert len(run_ids) == 2 and all(i in out for i in run_ids)
    for run_id in run_ids:
        _assert_same_run(tmp_path / "whole", tmp_path / "cut", run_id)
        assert len(_certs(tmp_path / "cut", run_id)[1]) == 12


def test_shards_of_a_sweep_make_the_whole_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    whole = sweep(_opts(tmp_path / "whole", max_images=None, subset="dev"), BUDGETS)
    parts = [sweep(_opts(tmp_path / "sharded", max_images=None, subset="dev",
                         shard=(i, 3)), BUDGETS) for i in range(3)]
    assert [r.summary.images for r in parts[0]] == [17, 17, 17]  # positions 0, 3, .., 48
    for r in whole:
        assert all(p.run_id == r.run_id for part in parts for p in part if
                   p.summary.card.identity["n"] == r.summary.card.identity["n"])
        _assert_same_run(tmp_path / "whole", tmp_path / "sharded", r.run_id)


def test_sweep_refusals_are_one_line(tmp_path, toy_registry, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="drop --n / --budget"):
        sweep(_opts(tmp_path, n=100), BUDGETS)
    with pytest.raises(ConfigError, match="drop --certification sequential"):
        sweep(_opts(tmp_path, certification="sequential"), BUDGETS)
    with pytest.raises(ConfigError, match="positive integers"):
        sweep(_opts(tmp_path), [100, 0])
    with pytest.raises(ConfigError, match="budgets 100 and 101 both give N = 20 at m = 5"):
        sweep(_opts(tmp_path, method="diffsmooth", extra_registries=(toy_registry,),
                    params={"denoiser": "toy-zero-eps", "m": 5}), [100, 101])
    with pytest.raises(ConfigError, match="cascade procedure"):
        sweep(_opts(tmp_path, method="multiscale"), BUDGETS)
    assert not (tmp_path / DB_NAME).exists()  # nothing was written


def test_sweep_cli_prints_one_table_per_method(cli, tmp_path):
    code, out, err = cli("sweep", "--methods", "gaussian,dummy", "--budgets", "300,40",
                         "--n0", "10", "--max-images", "2", "--quiet", "--results", tmp_path)
    assert code == 0, err
    assert out.count("budget") == 2 and out.count("results: ") == 4
    code, out, err = cli("run", "--method", "dummy", "--budget", "300", "--n0", "10",
                         "--max-images", "2", "--quiet", "--results", tmp_path)
    assert code == 0 and "0 new" in out
    code, _, err = cli("sweep", "--budgets", "100,0", "--results", tmp_path)
    assert code != 0 and "positive integers" in err and "Traceback" not in err
