"""The CLI end to end: golden closed-form runs, outputs, resume, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from scipy.stats import norm

from tests.conftest import ROOT, run_process


def read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_dummy_constant_golden(cli, tmp_path):
    n, sigma, alpha = 1000, 0.5, 0.001
    code, out, err = cli("run", "--method", "dummy", "--dataset", "digits", "--sigma", sigma,
                         "--n", n, "--max-images", 20, "--results", tmp_path, "--quiet")
    assert code == 0, err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    rows = read_tsv(runs[0] / "certs.tsv")
    assert list(rows[0])[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    expected = sigma * norm.ppf(alpha ** (1 / n))
    for row in rows:
        assert int(row["predict"]) == 0
        assert float(row["radius"]) == pytest.approx(expected, rel=1e-12)
        assert int(row["correct"]) == (int(row["label"]) == 0)
        assert int(row["count"]) == n
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["identity"]["n"] == n and summary["images"]["certified"] == 20
    assert "certified accuracy" in out and "ACR" in out


def test_dummy_linear_golden(cli, tmp_path):
    """Radii never exceed the exact distance to the hyperplane and come close at large N."""
    from bench.contract import DatasetInfo
    from bench.data.loaders import load_split
    from methods.dummy import linear_direction

    sigma = 0.25
    code, _, err = cli("run", "--method", "dummy", "--dataset", "digits", "--sigma", sigma,
                       "--n", 50_000, "--max-images", 10, "--results", tmp_path, "--quiet",
                       "--param", "kind=linear", "--param", "direction=mean",
                       "--param", "classes=[3, 8]", "--batch", 10_000)
    assert code == 0, err
    rows = read_tsv(next((tmp_path / "runs").iterdir()) / "certs.tsv")
    ds = load_split("digits")
    info: DatasetInfo = ds.info
    u, t = linear_direction(info, "mean", 0, None)
    for row in rows:
        x, _ = ds[int(row["idx"])]
        margin = float(x.reshape(-1) @ u) - t
        assert int(row["predict"]) in (-1, 8 if margin > 0 else 3)
        radius = float(row["radius"])
        assert radius <= abs(margin)
        if abs(margin) < 3 * sigma:  # within reach of N = 50,000
            assert radius > 0.85 * abs(margin)


def test_batch_size_does_not_change_certificates(cli, tmp_path):
    outs = []
    for batch in (100, 777):
        res = tmp_path / f"b{batch}"
        code, _, err = cli("run", "--n", 2000, "--max-images", 8, "--batch", batch,
                           "--results", res, "--quiet")
        assert code == 0, err
        outs.append(read_tsv(next((res / "runs").iterdir()) / "certs.tsv"))
    strip = [[{k: v for k, v in r.items() if k != "time"} for r in rows] for rows in outs]
    assert strip[0] == strip[1]


def test_rerun_resumes_and_extends(cli, tmp_path):
    args = ("run", "--n", 1000, "--results", tmp_path, "--quiet")
    code, out, _ = cli(*args, "--max-images", 3)
    assert code == 0 and "3 new" in out
    code, out, _ = cli(*args, "--max-images", 5)
    assert code == 0 and "5/360 images, 2 new" in out
    code, out, _ = cli(*args, "--max-images", 5)
    assert "0 new" in out


def test_shards_give_the_same_certificates(cli, tmp_path):
    base = ("run", "--n", 1000, "--max-images", 6, "--quiet", "--subset", "dev")
    cli(*base, "--results", tmp_path / "whole")
    for i in range(2):
        cli(*base, "--results", tmp_path / "sharded", "--shard", f"{i}/2",
            "--max-images", 3)
    rows = [read_tsv(next((tmp_path / d / "runs").iterdir()) / "certs.tsv")
            for d in ("whole", "sharded")]
    key = [{r["idx"]: (r["predict"], r["radius"]) for r in rows_} for rows_ in rows]
    assert key[0] == key[1]


@pytest.mark.parametrize("shard, env", [
    ("50/51", {}),  # the dev subset has 50 images
    ("auto", {"SLURM_ARRAY_TASK_ID": "60", "SLURM_ARRAY_TASK_MIN": "0",
              "SLURM_ARRAY_TASK_MAX": "63"}),
])
def test_an_empty_shard_says_so_and_writes_nothing(cli, tmp_path, monkeypatch, shard, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = cli("run", "--n", 10, "--n0", 5, "--quiet", "--subset", "dev", "--shard",
                         shard, "--results", tmp_path / "res")
    assert code == 0, err
    assert "holds no images (digits dev has 50, fewer than" in out and "no run written" in out
    assert not (tmp_path / "res").exists()


def test_killed_run_resumes_to_identical_results(tmp_path):
    """SIGKILL mid-run, rerun the same command: the same certificates as an unbroken run."""
    common = ["run", "--n", "10000", "--max-images", "12", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *common, "--results", str(killed)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = killed / "certbench.sqlite"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    done = con.execute("SELECT COUNT(*) FROM certs").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 12, "the run should have been killed part-way"
    resumed = run_process(*common, "--results", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{12 - done} new" in resumed.stdout or "new" in resumed.stdout
    whole = run_process(*common, "--results", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    rows = [read_tsv(next((d / "runs").iterdir()) / "certs.tsv")
            for d in (killed, tmp_path / "whole")]
    strip = [[{k: v for k, v in r.items() if k != "time"} for r in rr] for rr in rows]
    assert len(strip[0]) == 12 and strip[0] == strip[1]


def test_readme_run_command_end_to_end(tmp_path):
    """The README's first command, as a process, on a small slice."""
    proc = run_process("run", "--max-images", 5, "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gaussian on digits" in proc.stdout and "certified accuracy" in proc.stdout
    assert (next((tmp_path / "runs").iterdir()) / "summary.json").is_file()


def test_list(cli):
    code, out, _ = cli("list")
    assert code == 0
    for word in ("gaussian", "dummy", "digits", "cifar10", "cohen500", "digits-cnn-gaussian-0.25"):
        assert word in out


# ----- bad input: one line on stderr, exit 2, nothing corrupted ------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--method", "gausian"], "unknown method 'gausian' (did you mean 'gaussian'?); valid:"),
    (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
    (["--subset", "cohen500"], "subset"),
    (["--sigma", "0"], "--sigma must be in (0, 10]"),
    (["--sigma", "-1"], "--sigma must be in (0, 10]"),
    (["--n", "0"], "--n must be in [1,"),
    (["--n0", "0"], "--n0 must be in [1,"),
    (["--alpha", "1.5"], "--alpha must be in (0, 1)"),
    (["--sigma", "0.3"], "no classifier model for digits at sigma 0.3"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--model", "no-such-model"], "neither a registered model nor an existing file"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
     "device"),
    (["--shard", "3/2"], "--shard must be I/K"),
    (["--n", "many"], "invalid int value"),
])
def test_bad_input_gives_one_line(cli, tmp_path, args, needle):
    code, out, err = cli("run", "--results", tmp_path, "--quiet", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("certbench: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_a_relative_model_path_with_an_equals_sign_is_a_path(cli, tmp_path, monkeypatch):
    """Sweep folders are named like lr=0.1: an existing path is never read as ROLE=NAME."""
    folder = tmp_path / "lr=0.1"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(
        (ROOT / "bench" / "zoo" / "digits-cnn-macer-1.safetensors").read_bytes())
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", "--model", "lr=0.1/model.safetensors", "--arch", "digits_cnn",
                       "--n", 10, "--n0", 5, "--max-images", 1, "--results", "res", "--quiet")
    assert code == 0, err
    card = json.loads(next((tmp_path / "res").rglob("summary.json")).read_text())
    assert card["model_roles"]["classifier"]["name"] == "lr=0.1/model.safetensors"


def test_bad_registry_entry_names_file_entry_and_field(cli, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("methods:\n  mine:\n    adapter: methods.gaussian:Gaussian\n"
                     "    datasets:\n      digits:\n        classifier: digits-cnn-gausian-0.25\n")
    code, _, err = cli("run", "--method", "mine", "--extra-registry", extra, "--results", tmp_path)
    assert code == 2
    assert f"{extra}: methods.mine.datasets.digits.classifier: unknown model" in err
    assert "did you mean 'digits-cnn-gaussian-0.25'" in err
    extra.write_text("models:\n  m1:\n    arch: digits_cnn\n    source: zoo\n"
                     "    path: x.safetensors\n    sigmaa: 0.25\n")
    code, _, err = cli("list", "--extra-registry", extra)
    assert code == 2 and f"{extra}: models.m1.sigmaa: unknown field (did you mean 'sigma'?)" in err


def test_wrong_hash_and_wrong_shape_checkpoints(cli, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "models:\n  bad-hash:\n    arch: digits_cnn\n    source: zoo\n"
        "    path: digits-cnn-gaussian-0.25.safetensors\n    sha256: " + "0" * 64 + "\n"
        "methods:\n  g2:\n    adapter: methods.gaussian:Gaussian\n"
        "    datasets:\n      digits:\n        classifier: bad-hash\n")
    code, _, err = cli("run", "--method", "g2", "--extra-registry", extra, "--results", tmp_path)
    assert code == 2 and "bad-hash" in err and "sha256" in err and len(err.splitlines()) == 1
    bare = tmp_path / "weights.safetensors"  # a state dict without its model card
    bare.write_bytes((ROOT / "bench" / "zoo" / "digits-cnn-gaussian-0.25.safetensors").read_bytes())
    code, _, err = cli("run", "--model", bare, "--arch", "mnist_cnn", "--results", tmp_path)
    assert code == 2 and "does not fit architecture mnist_cnn" in err
    assert "shape" in err and len(err.splitlines()) == 1


def test_nan_model_stops_without_corrupting_the_store(cli, tmp_path):
    from safetensors.torch import load_file, save_file

    good = ROOT / "bench" / "zoo" / "digits-cnn-gaussian-0.25.safetensors"
    code, _, _ = cli("run", "--n", 500, "--max-images", 3, "--results", tmp_path, "--quiet",
                     "--model", good)
    assert code == 0
    weights = load_file(good)
    weights["fc2.bias"] = torch.full_like(weights["fc2.bias"], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_file(weights, bad)
    code, _, err = cli("run", "--n", 500, "--max-images", 3, "--results", tmp_path, "--quiet",
                       "--model", bad, "--arch", "digits_cnn")
    assert code == 2 and "NaN" in err and len(err.splitlines()) == 1
    with sqlite3.connect(tmp_path / "certbench.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM certs").fetchone()[0] == 3


@pytest.mark.slow
@pytest.mark.parametrize("sigma", ["0.25", "0.5", "1.0"])
def test_readme_digits_table_is_what_the_commands_produce(tmp_path, sigma):
    """docs/results-digits.md's certified-accuracy table comes from `run --sigma S` (~1 min)."""
    row = next(line for line in (ROOT / "docs" / "results-digits.md").read_text().splitlines()
               if line.startswith(f"| {sigma} | ") and line.count("|") == 11)
    cells = [c.strip() for c in row.strip("|").split("|")]
    proc = run_process("run", "--sigma", sigma, "--results", tmp_path, "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    ca = summary["metrics"]["certified_accuracy"]
    measured = [f"{100 * ca[r]:.1f}" for r in ("0", "0.25", "0.5", "0.75", "1")]
    assert measured == cells[1:6]
    assert f"{summary['metrics']['acr']:.3f}" == cells[6]
    assert f"{100 * summary['metrics']['abstain_rate']:.1f}%" == cells[7]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gaussian", "smoothadv", "macer", "consistency"])
@pytest.mark.parametrize("sigma", ["0.25", "0.5", "1"])
def test_readme_training_methods_table_is_what_the_commands_produce(tmp_path, method, sigma):
    """docs/results-digits.md's SmoothAdv/MACER/consistency table: `run --method M --sigma S`."""
    row = next(line for line in (ROOT / "docs" / "results-digits.md").read_text().splitlines()
               if line.startswith(f"| {sigma} | {method} | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    proc = run_process("run", "--method", method, "--sigma", sigma, "--results", tmp_path,
                       "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    ca = summary["metrics"]["certified_accuracy"]
    measured = [f"{100 * ca[r]:.1f}" for r in ("0", "0.25", "0.5", "0.75", "1", "1.25")]
    assert measured == cells[2:8]
    assert f"{summary['metrics']['acr']:.3f}" == cells[8]
    assert f"{100 * summary['metrics']['abstain_rate']:.1f}%" == cells[9]
