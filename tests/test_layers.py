"""The import contracts of pyproject.toml hold (``lint-imports``): bench is layered with no
circle, ``methods`` import only the adapter API and never each other, and the reporting side
never imports torch. They are checked on the import graph, lazy imports inside functions
included; the runtime checks (a table, leaderboard and import without torch in sys.modules,
the core without ray) stay in test_import.py and test_ray_executor.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

# What an adapter may import from bench (CONTRIBUTING.md, docs/contract.md): every other bench
# module must be forbidden to methods/ by the contract, so a new module is classified.
ADAPTER_API = {
    "bench.contract", "bench.protocol", "bench.params", "bench.errors", "bench.nets",
    "bench.diffusion", "bench.training", "bench.ndc", "bench.certify.noise",
    "bench.certify.procedures", "bench.data.specs",
}
FRONT = {"bench", "bench.__main__"}  # the package and its entry point: no layer
FIRST_PATHS = {"bench.protocol", "bench.datasets", "bench.dataspecs"}  # re-exports: no layer


def contracts() -> dict[str, dict]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def bench_modules() -> set[str]:
    """Every module and package of bench, dotted."""
    out = set()
    for path in (ROOT / "bench").rglob("*.py"):
        if "zoo" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def covered(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_import_contracts_are_kept():
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_module_is_in_a_layer_and_classified_for_adapters():
    by_name = contracts()
    layers = [m.strip() for line in next(c for c in by_name.values() if c["type"] == "layers")
              ["layers"] for m in line.replace(":", "|").split("|")]
    api_ban = next(c for c in by_name.values()
                   if c["type"] == "forbidden" and c["source_modules"] == ["methods"])
    modules = bench_modules()
    assert not sorted(m for m in modules - FRONT - FIRST_PATHS
                      if not covered(m, layers)), "a bench module outside every layer"
    unclassified = sorted(m for m in modules - FRONT if not covered(m, ADAPTER_API)
                          and not covered(m, api_ban["forbidden_modules"])
                          and not any(a.startswith(m + ".") for a in ADAPTER_API))
    assert not unclassified, ("bench modules neither in the adapter API nor forbidden to "
                              f"methods/: {unclassified}")
    assert not [m for m in api_ban["forbidden_modules"] if covered(m, ADAPTER_API)]


def test_the_torch_free_side_is_what_the_docs_say():
    """tables, leaderboards, the store, the registry and the records build without torch."""
    ban = contracts()["the reporting side never imports torch"]
    assert "torch" in ban["forbidden_modules"]
    assert {"bench.reports", "bench.store", "bench.registry", "bench.certify.records",
            "bench.data.specs"} <= set(ban["source_modules"])
