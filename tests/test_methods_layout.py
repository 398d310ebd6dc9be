"""``methods/`` holds method adapters only (architecture.md, sections 3 and 10): every file
defines a ``bench.contract.Method`` subclass. Losses, attacks and training loops live in the
harness (:mod:`bench.training`), so a new method is one file that imports ``bench`` and nothing
else: that no adapter imports another, nor anything of bench but the adapter API, is an import
contract (pyproject.toml, tests/test_layers.py). Checked on the source with ``ast``: no torch."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

ADAPTER_BASES = {"Method", "ClassifierMethod"}
FILES = sorted(p for p in (ROOT / "methods").glob("*.py") if p.name != "__init__.py")


def adapter_classes(tree: ast.Module) -> list[str]:
    """Classes deriving (directly or through a class of the same file) from bench.contract's
    Method or ClassifierMethod (also under their first path, bench.protocol)."""
    bases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("bench.contract", "bench.protocol"):
            bases |= {a.asname or a.name for a in node.names if a.name in ADAPTER_BASES}
    found: list[str] = []
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    for _ in range(len(classes)):  # a fixed point: subclasses of local adapters count too
        for cls in classes:
            names = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases}
            hit = names & (bases | set(found)) or any(
                n.startswith(("bench.contract.", "bench.protocol."))
                and n.rsplit(".", 1)[1] in ADAPTER_BASES
                for n in names)
            if hit and cls.name not in found:
                found.append(cls.name)
    return found


def test_the_check_catches_a_helper_module():
    helper = ast.parse("import torch\nfrom methods.gaussian import train\ndef loss(): ...\n")
    assert adapter_classes(helper) == []
    adapter = ast.parse("from bench.contract import ClassifierMethod as CM\nclass A(CM): ...\n"
                        "class B(A): ...\nclass C: ...\n")
    assert adapter_classes(adapter) == ["A", "B"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_methods_file_is_an_adapter(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert adapter_classes(tree), (
        f"methods/{path.name} defines no bench.contract.Method subclass: methods/ holds "
        "adapters only; helpers belong in bench")
