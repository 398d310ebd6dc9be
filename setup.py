"""Build hook: ship the repo-root ``registry.yaml`` inside the built ``bench`` package.

All metadata lives in pyproject.toml. ``registry.yaml`` stays at the repo root (users edit it
there), but an installed wheel has no repo root, so the build copies it to
``bench/registry.yaml``, where ``bench.registry.entries.default_registry_path`` looks after
``$CERTBENCH_REGISTRY`` and ``./registry.yaml``. Editable installs skip the copy and keep
reading the checkout's own file.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
REGISTRY = "registry.yaml"


class build_py_with_registry(build_py):  # noqa: N801 - setuptools command naming
    """build_py, plus ``registry.yaml`` -> ``<build_lib>/bench/registry.yaml``."""

    def _shipping_registry(self) -> bool:
        # An editable install reads the checkout's root file directly; a copy there would
        # only go stale.
        return not getattr(self, "editable_mode", False)

    def _registry_target(self) -> str:
        return str(Path(self.build_lib) / "bench" / REGISTRY)

    def run(self) -> None:
        super().run()
        if not self._shipping_registry():
            return
        source = ROOT / REGISTRY
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: the wheel must ship the registry")
        self.mkpath(str(Path(self._registry_target()).parent))
        self.copy_file(str(source), self._registry_target(), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if self._shipping_registry():
            outputs.append(self._registry_target())
        return outputs


setup(cmdclass={"build_py": build_py_with_registry})
