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
