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
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.contract import DatasetInfo, ModelRef
from bench.data import loaders
from bench.data.class_folders import ModelFacts
from bench.errors import ConfigError, ModelError
from bench.nets import load_network
from bench.nets.memory_format import (
    AUTO,
    CHANNELS_LAST,
    CONTIGUOUS,
    MEMORY_FORMATS,
    accepts_channels_last,
    to_channels_last,
)
from bench.registry.entries import Registry

PRIMARY_ROLE = "classifier"  # what a bare --model NAME replaces
PYTHON_PREFIX = "python:"  # the name of an in-memory model in the card: python:<ClassName>


def parse_overrides(values: str | list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``--model NAME`` (the classifier) and ``--model ROLE=NAME`` as a role -> name map. An
    existing file or folder is a path whatever it contains (``lr=0.1/model.safetensors``)."""
    if not values:
        return {}
    out: dict[str, str] = {}
    for value in [values] if isinstance(values, str) else values:
        role, sep, name = value.partition("=")
        if not sep or _is_path(value) or "/" in role or ":" in role \
                or not role.isidentifier():
            role, name = PRIMARY_ROLE, value
        if role in out:
            raise ConfigError(f"--model {role}=... given twice")
        out[role] = name
    return out


def _is_path(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # a name too long, or with a NUL, is no path here
        return False


class ModelChoice:
    """Which model each role of a run gets, by name and registry fields; nothing is loaded and
    no data is needed, so a class-folder tree can be read to fit the classifier
    (:meth:`facts`) before the run's :class:`RoleResolver` is built with the data's info.

    ``python_models`` (role -> an in-memory model, or a :class:`PythonModel`) come first: such
    a role is never looked up in the registry nor in ``overrides`` (see :class:`PythonModel`).
    """

    def __init__(self, registry: Registry, method: str, config: Mapping[str, Any], *,
                 dataset: str, sigma: float, overrides: Mapping[str, str] | None = None,
                 arch: str | None = None, python_models: Mapping[str, Any] | None = None):
        self.registry, self.method, self.config = registry, method, dict(config)
        self.dataset, self.sigma, self.arch = dataset, sigma, arch
        self.overrides = dict(overrides or {})
        self.python = {role: m if isinstance(m, PythonModel) else PythonModel(m)
                       for role, m in (python_models or {}).items()}

    def facts(self) -> ModelFacts | None:
        """What the classifier's entry says about its input (classes, channels, image size):
        a class-folder tree is read to fit it. None for a method without a classifier."""
        if PRIMARY_ROLE in self.python:
            model = self.python[PRIMARY_ROLE]
            return ModelFacts(num_classes=model.num_classes, name=model.name)
        if PRIMARY_ROLE not in self.overrides and PRIMARY_ROLE not in self.config:
            return None
        name = self.name_for(PRIMARY_ROLE)
        return ModelFacts.from_entry(name, self.entry(name))

    # ----- resolution -----------------------------------------------------------------------
    def name_for(self, role: str, override: str | None = None) -> str:
        """The model name for ``role``: --model, then the adapter's override, then the
        registry's choice for this dataset (matched to the run's sigma)."""
        chosen = self.overrides.get(role) or override
        if chosen:
            return str(chosen)
        choice = self.config.get(role)
        ds = self.dataset
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


class RoleResolver(ModelChoice):
    """Resolves and loads the models of one run (:class:`bench.contract.ModelSource`): the
    :class:`ModelChoice` of its roles, on the run's data (``info``) and device."""

    def __init__(self, registry: Registry, method: str, config: Mapping[str, Any], *,
                 info: DatasetInfo, sigma: float, device: torch.device, base_dir: Path,
                 overrides: Mapping[str, str] | None = None, arch: str | None = None,
                 python_models: Mapping[str, Any] | None = None):
        super().__init__(registry, method, config, dataset=info.name, sigma=sigma,
                         overrides=overrides, arch=arch, python_models=python_models)
        self.info, self.device, self.base_dir = info, device, base_dir
        self.loaded: dict[str, ModelRef] = {}
        self._nets: dict[str, torch.nn.Module] = {}

    @classmethod
    def for_data(cls, choice: ModelChoice, info: DatasetInfo, *, device: torch.device,
                 base_dir: Path) -> RoleResolver:
        """The resolver of ``choice`` on the run's data, built once its info is known."""
        return cls(choice.registry, choice.method, choice.config, info=info,
                   sigma=choice.sigma, device=device, base_dir=base_dir,
                   overrides=choice.overrides, arch=choice.arch, python_models=choice.python)

    # ----- the ModelSource interface ---------------------------------------------------------
    def load(self, role: str, override: str | None = None) -> torch.nn.Module:
        if role in self._nets:
            return self._nets[role]
        if role in self.python:
            return self._load_python(role)
        name = self.name_for(role, override)
        entry = self.entry(name, role)
        net = load_network(name, entry, dataset=self._trained_on(entry), device=self.device,
                           base_dir=self.base_dir)
        self.loaded[role] = ModelRef(role=role, name=name,
                                     sha256=getattr(net, "checkpoint_sha256", None),
                                     fields=dict(entry))
        self._nets[role] = net
        return net

    def _load_python(self, role: str) -> torch.nn.Module:
        """An in-memory model: hashed as given, then moved to the run's device in eval mode
        and wrapped so that it returns logits (:class:`PythonNet`)."""
        model = self.python[role]
        sha256, hash_of = python_model_sha256(model.obj)
        net = PythonNet(model.obj, self.info.num_classes).to(self.device).eval()
        net.checkpoint_sha256 = sha256
        self.loaded[role] = ModelRef(role=role, name=model.name, sha256=sha256,
                                     fields={"source": "in-memory", "hash_of": hash_of})
        self._nets[role] = net
        return net

    def check_overrides_used(self) -> None:
        """After the method has built its base classifier: a ``--model ROLE=...`` for a role it
        neither registers nor loaded is a mistake (a typo, another method's role), not a run
        with the default model under the default run id."""
        roles = sorted(set(self.loaded) | set(self.config))
        for role, name in self.overrides.items():
            if role in roles:
                continue
            given = name if role == PRIMARY_ROLE else f"{role}={name}"
            close = difflib.get_close_matches(role, roles, n=1)
            hint = f" (did you mean {close[0]}=...?)" if close else ""
            path = f"; if {given} is a file or folder, it does not exist" \
                if role != PRIMARY_ROLE and "/" in name else ""
            raise ConfigError(f"--model {given}: method {self.method!r} uses no {role!r} "
                              f"model{hint}; its roles: {', '.join(roles) or 'none'}{path}")

    def modules(self) -> dict[str, torch.nn.Module]:
        """role -> the module loaded for it (what :mod:`bench.running.flops` counts by role)."""
        return dict(self._nets)

    def apply_memory_format(self, requested: str) -> str:
        """Put the run's networks in ``requested`` memory format, after the method has loaded
        them; return the format used. ``channels_last`` requires every network of the run to
        be one known to accept it (:mod:`bench.nets.memory_format`): a user's network is
        refused in one line, never converted. ``auto`` uses channels-last where it can (every
        network known to accept it), else the default layout."""
        if requested not in MEMORY_FORMATS:
            raise ConfigError(f"unknown --memory-format {requested!r}; use "
                              f"{', '.join(MEMORY_FORMATS)}")
        if requested == CONTIGUOUS:
            return CONTIGUOUS
        refused = [role for role, net in self._nets.items() if not accepts_channels_last(net)]
        if not self._nets or refused:
            if requested == AUTO:
                return CONTIGUOUS
            who = (f"{refused[0]} model {self.loaded[refused[0]].name!r}" if refused
                   else f"method {self.method!r}'s base classifier (no network loaded)")
            raise ConfigError(
                f"--memory-format channels_last: {who} is not one of certbench's own networks "
                "known to accept channels-last inputs (a network that flattens with view() "
                "breaks on them); use --memory-format auto (channels-last only where every "
                "network of the run accepts it) or leave the default")
        for net in self._nets.values():
            to_channels_last(net)
        return CHANNELS_LAST

    def ref(self, role: str) -> ModelRef:
        if role not in self.loaded:
            raise ConfigError(f"no {role} model has been loaded for this run")
        return self.loaded[role]

    # ----- card records ---------------------------------------------------------------------
    def hashes(self) -> dict[str, str | None]:
        """name -> sha256 of every model loaded (part of the run identity)."""
        return {ref.name: ref.sha256 for ref in self.loaded.values()}

    def roles(self) -> dict[str, dict[str, Any]]:
        """role -> name and sha256 (recorded in the card); an in-memory model also says what
        its sha256 is of (``hash_of``: its state_dict, or its qualified name)."""
        return {role: {"name": ref.name, "sha256": ref.sha256,
                       **({"hash_of": ref.fields["hash_of"]} if "hash_of" in ref.fields
                          else {})}
                for role, ref in self.loaded.items()}

    def _trained_on(self, entry: Mapping[str, Any]) -> DatasetInfo:
        """The dataset whose statistics the model's input layer uses (a CIFAR-10 model keeps
        CIFAR-10's mean/std when certified on an imagefolder of CIFAR-like images)."""
        own = entry.get("dataset")
        if own and own != self.info.name and own in loaders.DATASET_NAMES \
                and own != "imagefolder":
            return loaders.dataset_info(own)
        return self.info


# ----- in-memory models (bench.evaluate) -----------------------------------------------------
@dataclass(frozen=True)
class PythonModel:
    """An in-memory model for one role of a run (``RunOptions.python_models``).

    ``obj`` is an ``nn.Module`` returning logits (B, K) or any callable returning labels (B,)
    (a tensor, numpy array or list), applied to noisy images in [0, 1] pixel units: any
    normalization is the model's own. ``num_classes`` is what it says about its output (a
    class-folder tree is read to fit it); None leaves it to the dataset.
    """

    obj: Any
    num_classes: int | None = None

    @property
    def name(self) -> str:
        return python_model_name(self.obj)


def python_model_name(obj: Any) -> str:
    """``python:<ClassName>`` (a plain function: ``python:<its qualified name>``)."""
    own = getattr(obj, "__qualname__", None) if not isinstance(obj, torch.nn.Module) else None
    return PYTHON_PREFIX + (own if isinstance(own, str) else type(obj).__name__)


def python_model_sha256(obj: Any) -> tuple[str, str]:
    """(sha256, what it is of) for an in-memory model.

    A model with parameters or buffers: the sha256 of its ``state_dict`` in a canonical
    order (names sorted; per entry its name, dtype, shape and raw bytes), whatever its device
    (``"state_dict"``). A callable without any: the sha256 of its qualified name
    (``module.qualname``; ``"qualified_name"``): two such callables of the same name share it.
    """
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else {}
    if state:
        digest = hashlib.sha256(b"certbench state_dict v1\0")
        for name in sorted(state):
            value = state[name]
            if torch.is_tensor(value):
                t = value.detach().to("cpu").contiguous()
                head = {"name": name, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": list(t.shape)}
                data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            else:  # an extra state (get_extra_state): its repr
                head, data = {"name": name, "dtype": "object"}, repr(value).encode()
            digest.update(json.dumps(head, sort_keys=True).encode() + b"\0")
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest(), "state_dict"
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    qualified = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
    return hashlib.sha256(f"certbench callable v1\0{qualified}".encode()).hexdigest(), \
        "qualified_name"


class PythonNet(torch.nn.Module):
    """An in-memory model made a logits network for the harness: logits (B, K) pass through
    (checked for width); labels (B,) become one-hot rows, and a label outside 0..K-1 a NaN
    row (the harness's invalid-output count)."""

    def __init__(self, obj: Any, num_classes: int):
        super().__init__()
        if isinstance(obj, torch.nn.Module):
            self.inner = obj  # a submodule: .to(device) and .eval() reach it
        else:
            self.fn = obj
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = self.inner if hasattr(self, "inner") else self.fn
        out = self._tensor(fn(x), x)
        k = self.num_classes
        if out.is_floating_point() and out.dim() == 2 and out.shape[1] != 1:
            if out.shape[0] != x.shape[0]:  # (1, K) per batch would be counted as 1 sample
                raise ModelError(self._wrong(out, x))
            if out.shape[1] != k:
                raise ModelError(f"the model returned {out.shape[1]} logits per image but the "
                                 f"dataset has {k} classes")
            return out
        labels = out.reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise ModelError(self._wrong(out, x))
        valid = (labels >= 0) & (labels < k)
        if labels.is_floating_point():  # labels as floats (a numpy float array): integral
            valid &= labels == torch.floor(labels)
        index = torch.where(valid, labels, torch.zeros_like(labels)).long()
        logits = torch.nn.functional.one_hot(index, k).to(torch.float32)
        return logits.masked_fill_(~valid[:, None], float("nan"))

    def _tensor(self, out: Any, x: torch.Tensor) -> torch.Tensor:
        """The answer as a tensor on ``x``'s device; None, text or objects are one line."""
        if torch.is_tensor(out):
            return out if out.device == x.device else out.to(x.device)
        array = None if out is None else np.asarray(out)
        if array is None or array.dtype.kind not in "biuf":
            raise ModelError(self._wrong(out, x))
        return torch.as_tensor(array, device=x.device)

    def _wrong(self, out: Any, x: torch.Tensor) -> str:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else type(out).__name__
        b = x.shape[0]
        model = self.inner if hasattr(self, "inner") else self.fn
        return (f"model {python_model_name(model)} returned "
                f"{got} for a batch of {b} images; return logits ({b}, K) or labels ({b},)")
