"""``--executor ray``: the same certificates as a serial run, however the run is interrupted.

A run on Ray workers (a local cluster of 2 CPUs) certifies bit for bit what a serial run does
(everything but the time and the device string); a driver killed with SIGKILL mid-run is
resumed by the same command; a worker actor killed mid-run (restarted by Ray, or gone for
good) loses and duplicates no image. Without ray installed these tests are skipped (CI
installs the ``ray`` extra); the missing-Ray message is tested either way.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

RAY_BEFORE = "ray" in sys.modules
import bench.cli  # noqa: E402, F401 - the core: with bench.running.runner, it must not import ray
from bench.running.plan import RunOptions  # noqa: E402
from bench.running.runner import run  # noqa: E402

RAY_AFTER_CORE = "ray" in sys.modules
from bench.store.database import DB_NAME, Store  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

IMAGES, N = 16, 2000
CMD = ["run", "--method", "gaussian", "--dataset", "digits", "--n", str(N),
       "--max-images", str(IMAGES), "--quiet"]


def _opts(results: Path, **kw) -> RunOptions:
    return RunOptions(method="gaussian", dataset="digits", n=N, max_images=IMAGES,
                      results=results, progress=False, **kw)


def _certs(results: Path) -> dict:
    """The run's certificates by index, without what may differ by worker (time, device)."""
    store = Store(results)
    try:
        (found,) = store.runs_of("digits")
        return {c.idx: dataclasses.replace(c, seconds=0.0, device="")
                for c in store.certs(found.run_id)}
    finally:
        store.close()


def _count(results: Path) -> int:
    try:
        with sqlite3.connect(results / DB_NAME, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM certs").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _wait_for(results: Path, at_least: int, proc=None, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _count(results)
        if n >= at_least or (proc is not None and proc.poll() is not None):
            return n
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} certificates after {timeout} s")


def _processes_under(folder: str) -> list[int]:
    """Live processes whose command line names ``folder`` (a Ray session's processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next((line for line in (entry / "status").read_text().splitlines()
                          if line.startswith("State:")), "")
        except OSError:
            continue
        if folder in cmdline and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


def _bench(args, env=None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the same run, serial, in this process."""
    results = tmp_path_factory.mktemp("serial")
    run(_opts(results))
    certs = _certs(results)
    assert len(certs) == IMAGES
    return certs


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster (2 CPUs) for this module, connected in this process; its temp
    folder is short (Unix socket paths are limited to ~107 bytes)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'certbench[ray]')")
    temp = tempfile.mkdtemp(prefix="cbray", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 2**20, log_to_driver=False, _temp_dir=temp,
             logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# ----- without Ray --------------------------------------------------------------------------
def test_polled_claims_say_none_instead_of_waiting(tmp_path):
    """The claims an executor with images in flight gets: None while another live process
    holds every image left, then the images once it lets them go."""
    from bench.running.executors import polled_indices
    from bench.store.database import ClaimSession

    store = Store(tmp_path)
    try:
        other = f"{socket.gethostname()}:{os.getpid()}:someone-else"  # alive: this process
        store.claim("r", [1, 2], other, limit=2)
        with ClaimSession(store, "r") as claims:
            feed = polled_indices(claims, [1, 2], lambda: 1)
            assert next(feed) is None and next(feed) is None
            store.release(other)
            assert [next(feed), next(feed)] == [1, 2]
            assert next(feed, "end") == "end"  # every image handed out
    finally:
        store.close()


def test_ray_not_installed_is_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" raises ImportError
    code, out, err = cli(*CMD, "--executor", "ray", "--results", tmp_path)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "certbench: error: --executor ray needs Ray, which is not installed: "
        "pip install 'certbench[ray]'"]
    assert not (tmp_path / DB_NAME).exists()  # refused before anything ran


def test_ray_options_need_the_ray_executor(cli, tmp_path):
    code, _, err = cli(*CMD, "--workers", "2", "--results", tmp_path)
    assert code == 2 and "--workers only apply to --executor ray" in err
    code, _, err = cli(*CMD, "--executor", "ray", "--workers", "0", "--results", tmp_path)
    assert code == 2 and "expected a positive integer" in err


def test_an_address_nobody_answers_fails_in_seconds_before_the_store(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", *CMD, "--executor", "ray",
                           "--address", "127.0.0.1:1", "--results", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start  # mostly importing torch; Ray itself retried for minutes
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "certbench: error: cannot reach a Ray cluster at --address 127.0.0.1:1 (Connection "
        "refused); start one there with 'ray start --head', fix the address, or leave "
        "--address out to start a local cluster"]
    assert took < 60 and not (tmp_path / "r").exists()


def test_the_core_never_imports_ray():
    if not RAY_BEFORE:  # this module imported the core (the CLI included) without ray
        assert not RAY_AFTER_CORE
        return
    out = subprocess.run(
        [sys.executable, "-c", "import sys, bench.running.runner, bench.running.executors, "
         "bench.cli; "
         "print('ray' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----- on Ray -------------------------------------------------------------------------------
def _kill_two_workers(ray, results: Path, killed: list) -> None:
    """Once images are coming in, kill one worker (Ray restarts it), then the other for good
    (its images go to the first); record (name, certificates then) of each."""
    _wait_for(results, 1)
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == "certbench" and a["name"].startswith("worker-"))
    assert len(names) == 2, names
    for name, at_least, restart in ((names[0], 2, True), (names[1], 4, False)):
        at = _wait_for(results, at_least)
        ray.kill(ray.get_actor(name, namespace="certbench"), no_restart=not restart)
        killed.append((name, at))


# First (before the module's cluster exists): a run that starts, and stops, its own cluster.
@pytest.mark.heavy
def test_a_ray_run_with_killed_workers_gives_the_serial_certificates(serial, tmp_path,
                                                                     monkeypatch):
    """--executor ray without a cluster starts a local one (2 workers), loses and
    duplicates no image when its workers are killed mid-run (one restarted by Ray, one gone
    for good), certifies what the serial run does, and shuts the cluster down."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'certbench[ray]')")
    assert not ray.is_initialized()
    temp = tempfile.mkdtemp(prefix="cbray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp)
    killed: list[tuple[str, int]] = []
    thread = threading.Thread(target=_kill_two_workers, args=(ray, tmp_path, killed))
    try:
        thread.start()
        result = run(_opts(tmp_path, executor="ray", workers=2))
        thread.join()
        assert not ray.is_initialized()
        assert len(killed) == 2 and all(at < IMAGES for _, at in killed), killed  # mid-run
        assert result.new_images == IMAGES
        assert _certs(tmp_path) == serial
        deadline = time.monotonic() + 30  # the cluster's processes exit after the shutdown
        while _processes_under(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_under(temp) == []
    finally:
        thread.join()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.heavy
def test_a_killed_driver_resumes_to_the_same_certificates(serial, ray_cluster, tmp_path):
    """A driver on an existing cluster (--address) killed with SIGKILL mid-run: the rerun
    takes over its claims and certifies only what is missing."""
    address = ray_cluster.get_runtime_context().gcs_address
    proc = _bench([*CMD, "--executor", "ray", "--address", address, "--results", tmp_path])
    try:
        done = _wait_for(tmp_path, 2, proc)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (done, proc.returncode, err[-2000:])
    killed_at = _count(tmp_path)
    assert 2 <= killed_at < IMAGES
    result = run(_opts(tmp_path, executor="ray"))
    assert result.new_images == IMAGES - killed_at
    assert _certs(tmp_path) == serial
    store = Store(tmp_path)
    try:
        assert store.claims() == []
    finally:
        store.close()


def test_the_executor_waits_while_nothing_is_claimable(serial, ray_cluster, tmp_path):
    """A ``None`` from the claims (every image left is another process's) is waited out:
    the executor asks again and certifies what comes next, as serially."""
    from bench.running import plan
    from bench.running.ray_executor import RayExecutor

    prep = plan.prepare(_opts(tmp_path))
    certs = list(RayExecutor(prep, workers=1, poll_s=0.01).certify(
        iter([None, 3, None, None, 5, None])))
    assert {c.idx: dataclasses.replace(c, seconds=0.0, device="") for c in certs} == {
        i: serial[i] for i in (3, 5)}


def test_a_worker_building_another_run_is_refused(ray_cluster, tmp_path):
    """A worker whose run is not the driver's (here: another seed) stops the run with its
    own one-line error, and no worker is left behind; too many workers are refused first."""
    from bench.certify.records import RunCard
    from bench.errors import ConfigError
    from bench.running import plan
    from bench.running.ray_executor import RayExecutor

    prep = plan.prepare(_opts(tmp_path))
    other = dataclasses.replace(prep, card=RunCard(identity={**prep.card.identity, "seed": 1},
                                                   extra=prep.card.extra))
    with pytest.raises(ConfigError, match=r"builds another run than the driver \(its seed "):
        list(RayExecutor(other, workers=1).certify(iter([0])))
    with pytest.raises(ConfigError, match="needs 3 CPU.*the Ray cluster has 2"):
        list(RayExecutor(prep, workers=3).certify(iter([0])))
    assert not [a for a in ray_cluster.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "certbench"]


def test_a_dataset_registered_only_in_the_driver_reaches_the_workers(ray_cluster, tmp_path):
    """The workers prepare from the driver's dataset spec, not its name: a dataset registered
    in the driver's process alone (register_dataset) is certified on Ray as serially."""
    from bench.data.specs import DATASETS, DatasetSpec, register_dataset
    from bench.running import plan
    from bench.running.executors import SerialExecutor
    from bench.running.ray_executor import RayExecutor

    register_dataset(DatasetSpec("digits-driver-only", (1, 8, 8), 10, (0.3054,), (0.3761,),
                                 (0.25, 2.0), "bench.data.loaders:load_digits"))
    try:
        prep = plan.prepare(RunOptions(method="dummy", dataset="digits-driver-only", n=200,
                                       results=tmp_path, progress=False))
        serial = {c.idx: c for c in SerialExecutor(prep.procedure, prep.dataset,
                                                   prep.device).certify([0, 1])}
        certs = list(RayExecutor(prep, workers=1).certify(iter([0, 1])))
    finally:
        DATASETS.pop("digits-driver-only")
    assert {c.idx: dataclasses.replace(c, seconds=0.0, device="") for c in certs} == {
        i: dataclasses.replace(c, seconds=0.0, device="") for i, c in serial.items()}


@pytest.mark.slow
def test_a_killed_driver_with_its_own_cluster_leaves_no_ray_process(serial, tmp_path):
    """SIGKILL to a driver that started its local cluster: the cluster dies with it, and the
    rerun resumes."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'certbench[ray]')")
    temp = tempfile.mkdtemp(prefix="cbray", dir="/tmp")
    try:
        proc = _bench([*CMD, "--executor", "ray", "--results", tmp_path],
                      env={"RAY_TMPDIR": temp})
        _wait_for(tmp_path, 2, proc, timeout=240)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 60
        while _processes_under(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_under(temp) == []
        again = _bench([*CMD, "--executor", "ray", "--results", tmp_path],
                       env={"RAY_TMPDIR": temp})
        out, err = again.communicate(timeout=240)
        assert again.returncode == 0, err
        assert _certs(tmp_path) == serial
    finally:
        shutil.rmtree(temp, ignore_errors=True)
