"""Packaging: a wheel installed outside the checkout works, and cannot be shadowed by the cwd.

The end-to-end test builds the wheel (``pip wheel``, build isolation: needs PyPI for setuptools),
installs it with ``pip install --target`` and runs ``python -m bench`` and the ``certbench``
console script from an empty directory and from one holding a hostile ``methods/`` package.
The other tests here are fast, in-process checks of the same guarantees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.registry.adapters import RENAME_HINT, builtin_methods_dir, import_adapter_module
from tests.conftest import ROOT

# What the build reads. The wheel is built from a clean copy of these, not in the checkout:
# setuptools never empties an in-tree build/lib, so a module deleted from the repo would still
# ship from a stale build/, and the test would write build/ and *.egg-info into the checkout.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "docs", "registry.yaml",
                "bench", "methods")
HOSTILE = 'raise RuntimeError("the working directory\'s methods/ was imported")\n'
RUN = ("run", "--max-images", "3", "--n", "200", "--quiet")


# --- fast, in-process -------------------------------------------------------------------------


@pytest.fixture
def no_methods_imported():
    """No ``methods*`` in sys.modules during the test; the originals are put back after."""
    def ours():
        return {k: v for k, v in sys.modules.items() if k == "methods" or k.startswith("methods.")}

    saved = ours()
    for name in saved:
        del sys.modules[name]
    yield
    for name in ours():
        del sys.modules[name]
    sys.modules.update(saved)


def test_builtin_methods_is_the_sibling_of_bench():
    import bench

    assert builtin_methods_dir() == Path(bench.__file__).resolve().parent.parent / "methods"
    assert (builtin_methods_dir() / "__init__.py").is_file()


def test_tests_and_registry_share_the_methods_modules():
    """``from methods.dummy import ...`` (repo root on sys.path) is the adapter's module."""
    import methods.dummy
    from bench.registry.entries import load_registry

    cls = load_registry(ROOT / "registry.yaml").method("dummy").load_adapter()
    assert sys.modules[cls.__module__] is methods.dummy
    assert Path(methods.__file__).resolve().parent == builtin_methods_dir()


def test_foreign_methods_already_imported_is_one_clear_error(tmp_path, monkeypatch,
                                                            no_methods_imported):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import methods  # the foreign one: tmp_path comes first on sys.path

    assert Path(methods.__file__).parent == tmp_path / "methods"
    from bench.registry.entries import MethodEntry

    entry = MethodEntry(name="gaussian", adapter="methods.gaussian:Gaussian", origin="r.yaml")
    with pytest.raises(ConfigError) as err:
        entry.load_adapter()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("r.yaml: methods.gaussian.adapter: a different 'methods' package")
    assert str(tmp_path / "methods") in message and RENAME_HINT in message


def test_builtin_methods_load_from_beside_bench_not_sys_path(tmp_path, monkeypatch,
                                                             no_methods_imported):
    """With no ``methods`` imported yet, ours is loaded even if a hostile one comes first."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text(HOSTILE)
    (tmp_path / "methods" / "dummy.py").write_text(HOSTILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = import_adapter_module("methods.dummy")
    assert Path(module.__file__).resolve() == builtin_methods_dir() / "dummy.py"
    assert [Path(p).resolve() for p in sys.modules["methods"].__path__] == [builtin_methods_dir()]


def test_unknown_builtin_module_names_the_fix():
    from bench.registry.entries import MethodEntry

    entry = MethodEntry(name="mine", adapter="methods.mine:Mine", origin="extra.yaml")
    with pytest.raises(ConfigError, match="has no module 'methods.mine'.*my_methods.mine:Mine"):
        entry.load_adapter()


def test_default_registry_path_order(tmp_path, monkeypatch):
    from bench.registry import entries

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CERTBENCH_REGISTRY", raising=False)
    packaged = Path(entries.__file__).resolve().parent.parent / "registry.yaml"
    # In the checkout (or an editable install) nothing is packaged: the root file is used.
    expected = packaged if packaged.is_file() else ROOT / "registry.yaml"
    assert entries.default_registry_path() == expected
    (tmp_path / "registry.yaml").write_text("models: {}\n")
    assert entries.default_registry_path() == tmp_path / "registry.yaml"
    monkeypatch.setenv("CERTBENCH_REGISTRY", str(tmp_path / "elsewhere.yaml"))
    assert entries.default_registry_path() == tmp_path / "elsewhere.yaml"


def test_console_script_names_itself(monkeypatch, capsys):
    from bench.cli import console_main, main

    monkeypatch.setattr(sys, "argv", ["certbench", "--help"])
    assert console_main() == 0
    assert capsys.readouterr().out.startswith("usage: certbench ")
    monkeypatch.setattr(sys, "argv", ["certbench", "run", "--bogus"])
    assert console_main() == 2
    assert capsys.readouterr().err.strip().endswith("(see 'certbench --help')")
    assert main(["--help"]) == 0  # the in-process default stays python -m bench
    assert capsys.readouterr().out.startswith("usage: python -m bench ")


def test_pyproject_ships_every_package_and_nothing_else():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["scripts"]["certbench"] == "bench.cli:console_main"
    find = config["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["bench", "bench.*", "methods", "methods.*"]


# --- end to end: build, install outside the checkout, run -------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site): the wheel built from the repo, installed with ``pip --target``."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    env = _clean_env()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(tmp / "dist")],
        cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("certbench-*.whl")
    site = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return wheel, site


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CERTBENCH_") and k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return {**env, "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def test_wheel_contents(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bench/registry.yaml" in names
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("bench/registry.yaml") == (ROOT / "registry.yaml").read_bytes()
    data = [p for folder in ("zoo", "reports/templates")
            for p in (ROOT / "bench" / folder).rglob("*")
            if p.suffix in (".safetensors", ".json", ".html")]
    assert any("digits-ddpm" in p.parts for p in data) and any(p.suffix == ".html" for p in data)
    missing = sorted(str(p.relative_to(ROOT)) for p in data
                     if p.relative_to(ROOT).as_posix() not in names)
    assert not missing, f"data files not in the wheel: {missing}"
    packages = [p.parent.relative_to(ROOT).as_posix()
                for top in ("bench", "methods") for p in (ROOT / top).rglob("__init__.py")
                if "__pycache__" not in p.parts]
    assert not [p for p in packages if f"{p}/__init__.py" not in names], "packages left out"
    others = {n.split("/")[0] for n in names} - {"bench", "methods"}
    assert len(others) == 1 and others.pop().endswith(".dist-info")  # no tests/, examples/...


@pytest.mark.parametrize("where", ["empty", "hostile"])
def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path, where):
    _, site = installed
    cwd = tmp_path / where
    cwd.mkdir()
    if where == "hostile":  # a user's own methods/ package must not replace ours
        (cwd / "methods").mkdir()
        (cwd / "methods" / "__init__.py").write_text(HOSTILE)
        (cwd / "methods" / "gaussian.py").write_text(HOSTILE)
    env = _clean_env(PYTHONPATH=str(site))

    def call(*cmd: str) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    probe = call(sys.executable, "-c", "import bench, bench.registry.entries as r; "
                 "print(bench.__file__); print(r.default_registry_path())")
    bench_file, registry = probe.stdout.split()
    assert Path(bench_file).resolve() == (site / "bench" / "__init__.py").resolve()
    assert Path(registry).resolve() == (site / "bench" / "registry.yaml").resolve()
    assert call(sys.executable, "-m", "bench", "--help").stdout.startswith(
        "usage: python -m bench ")

    # `list` runs alongside the first `run` (both import torch: that is most of the time).
    lister = subprocess.Popen([sys.executable, "-m", "bench", "list"], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = call(sys.executable, "-m", "bench", *RUN).stdout
        listed, errors = lister.communicate(timeout=300)
    finally:
        lister.kill()
    assert lister.returncode == 0, f"list:\n{listed[-2000:]}\n{errors[-3000:]}"
    assert "gaussian" in listed and "digits-cnn-gaussian-0.25" in listed
    assert "gaussian on digits" in out and "certified accuracy" in out

    script = site / "bin" / "certbench"
    assert script.is_file()
    assert call(str(script), "--help").stdout.startswith("usage: certbench ")
    out = call(str(script), *RUN).stdout
    assert "gaussian on digits" in out and "certified accuracy" in out
    assert len(list((cwd / "results" / "runs").iterdir())) == 1  # the same run, resumed
