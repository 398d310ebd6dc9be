"""Import a registry adapter's module so that certbench's own ``methods`` cannot be shadowed.

The built-in adapters are named ``methods.<x>:Class`` in ``registry.yaml``. A plain
``importlib.import_module("methods.gaussian")`` would take whatever ``methods`` comes first on
``sys.path`` -- under ``python -m bench`` that is the working directory, so a user's own
``methods/`` folder would silently replace ours. Here ``methods`` always means the package that
sits next to :mod:`bench` (in the checkout and in site-packages alike). No torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from bench.errors import ConfigError

PACKAGE = "methods"
RENAME_HINT = ("'methods' is certbench's adapter package; name your own package differently, "
               "e.g. my_methods.mine:Mine")


def builtin_methods_dir() -> Path:
    """The folder of certbench's own ``methods`` package (a sibling of ``bench``)."""
    return Path(__file__).resolve().parents[2] / PACKAGE  # bench/registry/adapters.py


def _locations(module: ModuleType) -> list[Path]:
    """Where an imported ``methods`` module lives: its ``__path__`` entries, else its file."""
    paths = [str(p) for p in (getattr(module, "__path__", None) or [])]
    if not paths and getattr(module, "__file__", None):
        paths = [str(Path(module.__file__).parent)]
    out = []
    for p in paths:
        try:
            out.append(Path(p).resolve())
        except OSError:  # pragma: no cover - unresolvable entry: treat as foreign
            continue
    return out


def builtin_methods() -> ModuleType:
    """certbench's ``methods`` package: the one already imported, or loaded from beside bench.

    Raises ConfigError if a different ``methods`` package has already been imported.
    """
    ours = builtin_methods_dir()
    existing = sys.modules.get(PACKAGE)
    if existing is not None:
        found = _locations(existing)
        if ours in found:
            return existing
        where = ", ".join(str(p) for p in found) or repr(existing)
        raise ConfigError(f"a different 'methods' package is already imported (from {where}, "
                          f"not {ours}); {RENAME_HINT}")
    init = ours / "__init__.py"
    if not init.is_file():
        raise ConfigError(f"certbench's adapter package is missing: {init} not found; "
                          "reinstall certbench")
    spec = importlib.util.spec_from_file_location(PACKAGE, init,
                                                  submodule_search_locations=[str(ours)])
    if spec is None or spec.loader is None:  # pragma: no cover - a real file always has one
        raise ConfigError(f"cannot load certbench's adapter package from {ours}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(PACKAGE, None)
        raise
    return module


def import_adapter_module(module_name: str) -> ModuleType:
    """Import ``module_name``; ``methods`` and ``methods.<x>`` always come from certbench.

    ImportError propagates (the caller names the registry entry); a foreign ``methods`` that
    is already imported, or a ``methods.<x>`` that certbench does not have, is a ConfigError
    with the fix.
    """
    if module_name != PACKAGE and not module_name.startswith(PACKAGE + "."):
        return importlib.import_module(module_name)
    builtin_methods()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # a dependency of the adapter is missing: reported as it is
        raise ConfigError(f"certbench's 'methods' package ({builtin_methods_dir()}) has no "
                          f"module {module_name!r}; {RENAME_HINT}") from None
