"""Shared fixtures: run the CLI in-process (as a user would, through main()) or as a process."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist each worker (and every process it starts) computes on one thread: two
# workers with torch's default of one thread per core would oversubscribe the cores and spin.
# Results never depend on it (tests that retrain bit for bit set the thread count the card says).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from bench.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call ``python -m bench ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(ROOT)

    def call(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def contributing_block(test_file: str, lang: str = "bash") -> str:
    """The code block CONTRIBUTING.md marks as run verbatim by ``test_file``."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    marker = f"<!-- ci: the block below is run verbatim by tests/{test_file} -->"
    match = re.search(re.escape(marker) + rf"\s*```{lang}\n(.*?)```", text, re.S)
    assert match, f"CONTRIBUTING.md lost the block that tests/{test_file} runs"
    return match.group(1)


def run_documented_commands(block: str, tmp_path: Path, monkeypatch, capsys) -> list[str]:
    """Run each ``python -m bench ...`` line of a documented block in-process (the same commands
    without a torch import each) from a user's working folder holding a copy of examples/;
    every command must succeed. Returns their outputs."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.setenv("CERTBENCH_REGISTRY", str(ROOT / "registry.yaml"))
    monkeypatch.chdir(tmp_path)  # results and models land here, not in the repo
    outputs = []
    for command in (line for line in block.splitlines() if line.strip()):
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "bench"], command
        code = main(argv[3:])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{out}\n{err}"
        outputs.append(out)
    return outputs


def run_process(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


ZERO_EPS_DENOISER = '''import torch
from torch import nn


class ZeroEps(nn.Module):
    """A denoiser that predicts zero noise on the linear 1e-4..0.02, T=1000 schedule."""

    def __init__(self):
        super().__init__()
        b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - b, 0)

    def forward(self, x, t):
        return torch.zeros_like(x)
'''


@pytest.fixture
def toy_registry(tmp_path, monkeypatch):
    """An extra registry naming ``toy-zero-eps``: a zero-eps denoiser (source python)."""
    (tmp_path / "toy_zero_eps_denoiser.py").write_text(ZERO_EPS_DENOISER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = tmp_path / "extra.yaml"
    reg.write_text("models:\n  toy-zero-eps: {source: python, "
                   "path: 'toy_zero_eps_denoiser:ZeroEps'}\n")
    return reg
