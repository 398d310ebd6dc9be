"""``methods/`` holds method adapters only (architecture.md, sections 3 and 10): every file
defines a ``bench.contract.Method`` subclass and imports no other ``methods`` module. Losses,
attacks and training loops live in the harness (:mod:`bench.training`), so a new method is one
file that imports ``bench`` and nothing else. Checked on the source with ``ast``: no torch."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

ADAPTER_BASES = {"Method", "ClassifierMethod"}
FILES = sorted(p for p in (ROOT / "methods").glob("*.py") if p.name != "__init__.py")


def imports_of_methods(tree: ast.AST) -> list[str]:
    """The imports that reach into the ``methods`` package (absolute or relative)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "methods"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0 or module.split(".")[0] == "methods":
                found.append("." * node.level + module)
    return found


def adapter_classes(tree: ast.Module) -> list[str]:
    """Classes deriving (directly or through a class of the same file) from bench.contract's
    Method or ClassifierMethod."""
    bases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "bench.contract":
            bases |= {a.asname or a.name for a in node.names if a.name in ADAPTER_BASES}
    found: list[str] = []
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    for _ in range(len(classes)):  # a fixed point: subclasses of local adapters count too
        for cls in classes:
            names = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases}
            hit = names & (bases | set(found)) or any(
                n.startswith("bench.contract.") and n.rsplit(".", 1)[1] in ADAPTER_BASES
                for n in names)
            if hit and cls.name not in found:
                found.append(cls.name)
    return found


def test_the_checks_catch_a_helper_module_and_a_cross_import():
    helper = ast.parse("import torch\nfrom methods.gaussian import train\nfrom . import x\n"
                       "def loss(): ...\n")
    assert imports_of_methods(helper) == ["methods.gaussian", "."]
    assert adapter_classes(helper) == []
    adapter = ast.parse("from bench.contract import ClassifierMethod as CM\nclass A(CM): ...\n"
                        "class B(A): ...\nclass C: ...\n")
    assert adapter_classes(adapter) == ["A", "B"] and imports_of_methods(adapter) == []


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_methods_file_is_an_adapter_importing_no_other_method(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert imports_of_methods(tree) == [], (
        f"methods/{path.name} imports another methods module; move shared code into bench "
        "(e.g. bench.training) and import it from there")
    assert adapter_classes(tree), (
        f"methods/{path.name} defines no bench.contract.Method subclass: methods/ holds "
        "adapters only; helpers belong in bench")
