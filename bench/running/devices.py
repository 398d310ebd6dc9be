"""Which device a run uses and how it is described in cards and certificates."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError
from bench.version import __version__


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; one that this
    machine does not have is one line here, not a torch error at the first tensor."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                          f"cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS (Apple GPU) is not available "
                          "here; use --device cpu")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


GIT_TIMEOUT_S = 2.0  # the one git call of a card; a slower (or absent) git is left out
# Versions read from the installed distributions' metadata (timm and diffusers are slow to
# import and many runs never use them); a package that is not installed is left out.
PACKAGES = {"torchvision": "torchvision", "numpy": "numpy", "timm": "timm",
            "diffusers": "diffusers"}


def environment(device: torch.device) -> dict[str, Any]:
    """What ran a run, for its card's descriptive ``extra`` (never the identity: two runs with
    the same identity are the same run whatever their environment).

    Always: ``certbench``, ``torch``, ``python``, ``device`` and ``command`` (the process's
    command line). When known: ``torchvision``, ``numpy``, ``timm``, ``diffusers``, ``cuda``
    (the CUDA version torch was built with), ``cudnn`` (the cuDNN library torch loaded, on a
    CUDA device) and ``git_commit`` (the checkout's short sha, ``+dirty`` with uncommitted
    changes to tracked files) when certbench runs from a git checkout.
    """
    env: dict[str, Any] = {"certbench": __version__, "torch": torch.__version__,
                           "python": platform.python_version(), "device": describe_device(device)}
    for key, dist in PACKAGES.items():
        version = _dist_version(dist)
        if version is not None:
            env[key] = version
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    if device.type == "cuda" and torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
        if cudnn is not None:
            env["cudnn"] = cudnn
    commit = git_commit()
    if commit is not None:
        env["git_commit"] = commit
    env["command"] = command_line()
    return env


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def command_line() -> str:
    """The command that started this process, as typed (``python -m bench run ...``: the
    interpreter's own argv where Python keeps it, else ``sys.argv``), shell-quoted."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    return shlex.join(argv)


def source_root() -> Path:
    """The folder holding the ``bench`` package: a checkout's root for an editable install or
    a clone, ``site-packages`` for an installed wheel."""
    return Path(__file__).resolve().parents[2]  # bench/running/devices.py -> the root


def git_commit(root: Path | None = None, *, timeout: float = GIT_TIMEOUT_S) -> str | None:
    """The short sha of the git checkout at ``root`` (default :func:`source_root`), with
    ``+dirty`` when tracked files have uncommitted changes; None when ``root`` is not the top
    of a checkout (an installed wheel, even one inside another repository's virtualenv), git
    is absent, slow or fails. One read-only git call (no index refresh, no lock)."""
    root = source_root() if root is None else Path(root)
    if not (root / ".git").exists():  # a folder, or a file for a worktree / submodule
        return None
    cmd = ["git", "-C", str(root), "status", "--porcelain=v2", "--branch",
           "--untracked-files=no", "--ignore-submodules=all"]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0:
        return None
    sha, dirty = None, False
    for line in done.stdout.splitlines():
        if line.startswith("# branch.oid "):
            sha = line.split()[2]
        elif line and not line.startswith("#"):
            dirty = True
    if sha is None or not all(c in "0123456789abcdef" for c in sha):  # "(initial)": no commit
        return None
    return sha[:12] + ("+dirty" if dirty else "")
