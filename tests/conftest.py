"""Shared fixtures: run the CLI in-process (as a user would, through main()) or as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

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
