"""Argument types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


def shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/4, got {text!r}") from None
    return i, k


def param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def common_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", type=Path, help="registry file (default: ./registry.yaml)")
    p.add_argument("--extra-registry", type=Path, action="append", default=[],
                   help="additional registry file with more models/methods (repeatable)")
