"""Models by role: the one place a run's models are chosen, loaded and recorded.

An adapter asks ``ctx.model("classifier")`` (or ``"denoiser"``, or any role its registry entry
names). The choice is made here, once: a ``--model [ROLE=]NAME`` override, else the adapter's
own override (a param such as ``denoiser``), else the registry's per-dataset entry (one name,
or a sigma -> name map matched to the run's sigma). Names are registered models, local
checkpoint files, diffusers folders, Hub ids or ``module:Class`` denoisers; every load goes
through :func:`bench.nets.load_network`, which checks and returns the sha256 that the run's
card records next to the name and role.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError
from bench.imagefolder import ModelFacts
from bench.nets import load_network
from bench.protocol import DatasetInfo, ModelRef
from bench.registry import Registry

PRIMARY_ROLE = "classifier"  # what a bare --model NAME replaces


def models_dir(given: Path | None = None) -> Path:
    """Where non-zoo checkpoints live: --models-dir, else $CERTBENCH_MODELS, else ./models."""
    return Path(given or os.environ.get("CERTBENCH_MODELS", "models"))


def parse_overrides(values: str | list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``--model NAME`` (the classifier) and ``--model ROLE=NAME`` as a role -> name map."""
    if not values:
        return {}
    out: dict[str, str] = {}
    for value in [values] if isinstance(values, str) else values:
        role, sep, name = value.partition("=")
        if not sep or ("/" in role or ":" in role or not role.isidentifier()):
            role, name = PRIMARY_ROLE, value
        if role in out:
            raise ConfigError(f"--model {role}=... given twice")
        out[role] = name
    return out


class RoleResolver:
    """Resolves and loads the models of one run (:class:`bench.protocol.ModelSource`)."""

    def __init__(self, registry: Registry, method: str, config: Mapping[str, Any], *,
                 info: DatasetInfo, sigma: float, device: torch.device, base_dir: Path,
                 overrides: Mapping[str, str] | None = None, arch: str | None = None):
        self.registry, self.method, self.config = registry, method, dict(config)
        self.info, self.sigma, self.device = info, sigma, device
        self.base_dir, self.arch = base_dir, arch
        self.overrides = dict(overrides or {})
        self.loaded: dict[str, ModelRef] = {}
        self._nets: dict[str, torch.nn.Module] = {}

    # ----- the ModelSource interface ---------------------------------------------------------
    def load(self, role: str, override: str | None = None) -> torch.nn.Module:
        if role in self._nets:
            return self._nets[role]
        name = self.name_for(role, override)
        entry = self.entry(name, role)
        net = load_network(name, entry, dataset=self._trained_on(entry), device=self.device,
                           base_dir=self.base_dir)
        self.loaded[role] = ModelRef(role=role, name=name,
                                     sha256=getattr(net, "checkpoint_sha256", None),
                                     fields=dict(entry))
        self._nets[role] = net
        return net

    def ref(self, role: str) -> ModelRef:
        if role not in self.loaded:
            raise ConfigError(f"no {role} model has been loaded for this run")
        return self.loaded[role]

    def facts(self) -> ModelFacts | None:
        """What the classifier's entry says about its input (classes, channels, image size):
        a class-folder tree is read to fit it. None for a method without a classifier."""
        if PRIMARY_ROLE not in self.overrides and PRIMARY_ROLE not in self.config:
            return None
        name = self.name_for(PRIMARY_ROLE)
        return ModelFacts.from_entry(name, self.entry(name))

    # ----- card records ---------------------------------------------------------------------
    def hashes(self) -> dict[str, str | None]:
        """name -> sha256 of every model loaded (part of the run identity)."""
        return {ref.name: ref.sha256 for ref in self.loaded.values()}

    def roles(self) -> dict[str, dict[str, Any]]:
        """role -> name and sha256 (recorded in the card)."""
        return {role: {"name": ref.name, "sha256": ref.sha256}
                for role, ref in self.loaded.items()}

    # ----- resolution -----------------------------------------------------------------------
    def name_for(self, role: str, override: str | None = None) -> str:
        """The model name for ``role``: --model, then the adapter's override, then the
        registry's choice for this dataset (matched to the run's sigma)."""
        chosen = self.overrides.get(role) or override
        if chosen:
            return str(chosen)
        choice = self.config.get(role)
        ds = self.info.name
        if choice is None:
            raise ConfigError(
                f"method {self.method!r} has no {role!r} model for dataset {ds!r}; add one "
                f"under methods.{self.method}.datasets.{ds}.{role} in the registry or pass "
                f"--model {'' if role == PRIMARY_ROLE else role + '='}NAME_OR_PATH")
        if isinstance(choice, str):
            return choice
        for sig, name in choice.items():
            if abs(float(sig) - self.sigma) < 1e-9:
                return name
        have = ", ".join(str(s) for s in sorted(float(s) for s in choice))
        raise ConfigError(
            f"method {self.method!r} has no {role} model for {ds} at sigma {self.sigma:g} "
            f"(registered sigmas: {have}); pick one of those, train one with "
            f"'python -m bench train --method {self.method} --dataset {ds} "
            f"--sigma {self.sigma:g}', or pass --model NAME_OR_PATH")

    def entry(self, name: str, role: str = PRIMARY_ROLE) -> dict[str, Any]:
        """The registry fields of ``name``, or fields inferred for a path, folder, Hub id or
        ``module:Class``."""
        if name in self.registry.models:
            model = self.registry.models[name]
            entry = dict(model.fields)
            # A module:callable arch is imported from beside the registry file naming it.
            entry["registry_dir"] = str(Path(model.origin).expanduser().resolve().parent)
            if self.arch and entry.get("arch") and entry["arch"] != self.arch:
                raise ConfigError(f"--arch {self.arch} contradicts model {name!r}'s arch "
                                  f"{entry['arch']}; drop --arch")
            return entry
        path = Path(name).expanduser()
        if path.is_file():
            entry = {"source": "auto", "path": str(path.resolve())}
            return {**entry, "arch": self.arch} if self.arch else entry
        if path.is_dir():
            return {"source": "diffusers", "path": str(path.resolve())}
        if ":" in name and not name.startswith((".", "/", "~")):
            return {"source": "python", "path": name}
        if role != PRIMARY_ROLE and name.count("/") == 1 and not name.startswith((".", "~")):
            return {"source": "diffusers", "path": name}  # a Hub repo id
        close = difflib.get_close_matches(name, list(self.registry.models), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{role} model {name!r} is neither a registered model{hint} nor an existing file "
            "or folder; pass a registered name ('python -m bench list') or a path")

    def _trained_on(self, entry: Mapping[str, Any]) -> DatasetInfo:
        """The dataset whose statistics the model's input layer uses (a CIFAR-10 model keeps
        CIFAR-10's mean/std when certified on an imagefolder of CIFAR-like images)."""
        from bench import datasets

        own = entry.get("dataset")
        if own and own != self.info.name and own in datasets.DATASET_NAMES \
                and own != "imagefolder":
            return datasets.dataset_info(own)
        return self.info
