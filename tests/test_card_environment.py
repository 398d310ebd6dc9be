"""The run card's environment: versions, git commit and command line, descriptive only (the run
id, a hash of the identity alone, is the same as before the environment grew)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from bench.certify.records import run_id_of
from bench.running import devices
from tests.conftest import ROOT, run_process

# The id this run had before the environment recorded more than certbench/torch/python/device.
DIGITS_RUN_ID = "466f2c43d896"
RUN_ARGS = ("run", "--method", "gaussian", "--dataset", "digits", "--n", "100",
            "--max-images", "2")
ALWAYS = {"certbench", "torch", "python", "device", "command", "numpy", "torchvision", "timm",
          "diffusers"}


@pytest.fixture(scope="module")
def digits_card(tmp_path_factory) -> dict:
    results = tmp_path_factory.mktemp("results")
    done = run_process(*RUN_ARGS, "--results", str(results), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    (summary,) = results.glob("runs/*/summary.json")
    return json.loads(summary.read_text())


def test_cli_card_records_the_environment(digits_card):
    env = digits_card["environment"]
    assert ALWAYS <= set(env)
    assert env["torch"] == torch.__version__
    assert env["device"].startswith("cpu")
    assert "-m bench run --method gaussian --dataset digits --n 100 --max-images 2" in (
        env["command"])
    if torch.version.cuda:
        assert env["cuda"] == torch.version.cuda
    assert "cudnn" not in env  # a CPU run loads no cuDNN
    if (ROOT / ".git").exists() and devices.git_commit(ROOT) is not None:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert env["git_commit"].removesuffix("+dirty") == sha[:12]


def test_run_id_is_unchanged(digits_card):
    assert digits_card["run_id"] == DIGITS_RUN_ID == run_id_of(digits_card["identity"])
    assert "environment" not in digits_card["identity"]


@pytest.mark.parametrize("card", sorted((ROOT / "leaderboards" / "runs").glob("*/card.json")),
                         ids=lambda p: p.parent.name)
def test_committed_cards_keep_their_ids(card):
    data = json.loads(card.read_text())
    assert run_id_of(data["identity"]) == data["run_id"]
    assert card.parent.name.endswith(data["run_id"])


def test_environment_keeps_its_keys_and_types():
    env = devices.environment(torch.device("cpu"))
    assert ALWAYS <= set(env)
    json.dumps(env)  # JSON types only
    assert all(isinstance(v, str) for k, v in env.items() if k != "cudnn")


def test_no_git_is_no_commit(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(devices.subprocess, "run", missing)
    assert devices.git_commit(ROOT) is None
    assert "git_commit" not in devices.environment(torch.device("cpu"))


def test_slow_git_is_no_commit(monkeypatch):
    def slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(devices.subprocess, "run", slow)
    assert devices.git_commit(ROOT) is None


def test_not_a_checkout_is_no_commit(tmp_path: Path, monkeypatch):
    """An installed wheel: no git call at all, even inside another repository."""
    calls = []
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: calls.append(a))
    assert devices.git_commit(tmp_path) is None
    assert calls == []


@pytest.mark.parametrize(("status", "expected"), [
    ("# branch.oid 0123456789abcdef0123\n# branch.head main\n", "0123456789ab"),
    ("# branch.oid 0123456789abcdef0123\n1 .M N... 100644 100644 100644 a b bench/x.py\n",
     "0123456789ab+dirty"),
    ("# branch.oid (initial)\n# branch.head main\n", None),
])
def test_git_status_parsing(tmp_path: Path, monkeypatch, status, expected):
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(devices.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, status, ""))
    assert devices.git_commit(tmp_path) == expected


def test_git_failure_is_no_commit(tmp_path: Path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(devices.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 128, "", "fatal"))
    assert devices.git_commit(tmp_path) is None
