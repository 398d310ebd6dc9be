"""Load and validate ``registry.yaml``: named models and methods (no torch).

Validation is strict and happens before any compute: unknown fields, wrong types, duplicate
keys and references to unregistered models all fail with one line naming the file, the entry
and the field, with a did-you-mean where one is close. Adapters are imported lazily from their
``module:Class`` string, so reading the registry never imports a method.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.params import bind, check_sigma
from bench.registry.adapters import import_adapter_module

MODEL_SOURCES = ("zoo", "cohen", "state_dict", "auto", "timm", "torchvision", "diffusers",
                 "python")
# Library models whose weights may come from the library's hub (no path needed).
HUB_SOURCES = ("timm", "torchvision")
INPUT_LAYERS = ("normalize", "center", "none")
MODEL_FIELDS = {
    "arch": str, "source": str, "path": str, "sha256": str, "dataset": str, "input_layer": str,
    "sigma": (int, float), "trained_by": str, "num_classes": int, "url": str,
    "description": str, "trained_with": str, "image_size": int, "mean": list, "std": list,
    "channels": int, "classes": list,
}
METHOD_FIELDS = {
    "adapter": str, "description": str, "paper": dict, "params": dict, "datasets": dict,
    "reported": list,
}
PAPER_FIELDS = {"title": str, "authors": str, "venue": str, "year": int, "url": str}
REPORTED_FIELDS = {
    "dataset": str, "sigma": (int, float, str), "N": int, "N0": int, "m": int, "alpha": float,
    "images": int, "setting": str, "accuracy": dict, "acr": (int, float), "source": str,
    "model": str, "notes": str,
}
ADAPTER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def default_registry_path() -> Path:
    """$CERTBENCH_REGISTRY, else ./registry.yaml, else the copy shipped inside the installed
    package (``bench/registry.yaml``, put there by the wheel build), else the checkout's
    root ``registry.yaml`` (a source checkout or an editable install)."""
    env = os.environ.get("CERTBENCH_REGISTRY")
    if env:
        return Path(env)
    local = Path.cwd() / "registry.yaml"
    if local.is_file():
        return local
    package_dir = Path(__file__).resolve().parent.parent  # bench/
    packaged = package_dir / "registry.yaml"
    if packaged.is_file():
        return packaged
    return package_dir.parent / "registry.yaml"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fields: Mapping[str, Any]
    origin: str  # the registry file that declared it

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass(frozen=True)
class MethodEntry:
    name: str
    adapter: str
    origin: str
    description: str = ""
    paper: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    datasets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reported: tuple[Mapping[str, Any], ...] = ()

    def dataset_config(self, dataset: str) -> Mapping[str, Any]:
        """This method's models and overrides for one dataset (empty if none registered)."""
        return self.datasets.get(dataset) or {}

    @property
    def reported_only(self) -> bool:
        """A method known only from its paper's numbers: nobody has written its adapter."""
        return not self.adapter

    def load_adapter(self):
        """Import the adapter class named by ``module:Class`` (errors name the entry)."""
        where = f"{self.origin}: methods.{self.name}.adapter"
        if self.reported_only:
            raise ConfigError(
                f"{where}: method {self.name!r} is reported-only (no adapter): the registry has "
                "its paper's numbers but no code to certify it; add an adapter to run it"
            )

        module_name, _, class_name = self.adapter.partition(":")
        try:
            # ``methods.<x>`` is always certbench's own package, never a same-named one on
            # sys.path (e.g. a ``methods/`` folder in the working directory).
            module = import_adapter_module(module_name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import module {module_name!r} ({exc})") from exc
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ConfigError(f"{where}: module {module_name!r} has no class {class_name!r}")
        return cls

    def model_roles(self, dataset: str) -> dict[str, Any]:
        """role -> model name (or sigma -> name map) for one dataset; params left out."""
        return {k: v for k, v in self.dataset_config(dataset).items() if k != "params"}

    def instantiate(self, dataset: str | None = None, overrides: Mapping[str, Any] | None = None,
                    overrides_from: str = "--param "):
        """The adapter built with its declared params, checked layer by layer: the entry's
        params, the dataset's params, then ``overrides`` (errors name where a value came from)."""
        # lazy: torch side only (pyproject.toml's torch-free contract)
        from bench.contract import Method

        cls = self.load_adapter()
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ConfigError(f"{self.origin}: methods.{self.name}.adapter: {self.adapter} is not "
                              "a bench.contract.Method subclass")
        where = f"{self.origin}: methods.{self.name}"
        layers = [(f"{where}.params.", self.params)]
        if dataset is not None:
            block = self.dataset_config(dataset).get("params") or {}
            layers.append((f"{where}.datasets.{dataset}.params.", block))
        layers.append((overrides_from, overrides or {}))
        cls.id = cls.id or self.name
        return cls(**bind(self.name, cls.PARAMS, layers))


@dataclass
class Registry:
    models: dict[str, ModelEntry]
    methods: dict[str, MethodEntry]
    files: list[str]

    def method(self, name: str) -> MethodEntry:
        if name not in self.methods:
            raise ConfigError(_unknown("method", name, self.methods))
        return self.methods[name]

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise ConfigError(_unknown("model", name, self.models))
        return self.models[name]


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(known) or 'none'}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key]})"
            )
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(f"registry file {path} not found; pass --registry FILE")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}:{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'models' and 'methods'")
    return data


def _check_fields(where: str, data: Any, schema: Mapping[str, Any]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{key}: unknown field{hint}; allowed: {', '.join(sorted(schema))}"
            )
        expected = schema[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else "/".join(
                t.__name__ for t in expected)
            raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")


def _validate_model(where: str, name: str, data: Any) -> ModelEntry:
    _check_fields(where, data, MODEL_FIELDS)
    source = data.get("source")
    if source not in MODEL_SOURCES:
        raise ConfigError(
            f"{where}.source: expected one of {', '.join(MODEL_SOURCES)}, got {source!r}")
    if "path" not in data and source not in HUB_SOURCES:
        what = {"diffusers": "a diffusers folder or Hub repo id",
                "python": "a 'module:Class' denoiser"}.get(source, "the checkpoint file")
        raise ConfigError(f"{where}.path: missing ({what})")
    if source in ("zoo", "state_dict", *HUB_SOURCES) and "arch" not in data:
        raise ConfigError(f"{where}.arch: missing (required for source {source!r})")
    if "sha256" in data and not SHA256_RE.match(data["sha256"]):
        raise ConfigError(
            f"{where}.sha256: expected 64 lowercase hex digits, got {data['sha256']!r}")
    if data.get("input_layer", "normalize") not in INPUT_LAYERS:
        raise ConfigError(
            f"{where}.input_layer: expected one of {', '.join(INPUT_LAYERS)}, "
            f"got {data['input_layer']!r}"
        )
    for key in ("mean", "std"):
        values = data.get(key)
        if values is not None and (not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                or (key == "std" and min(values) <= 0)):
            raise ConfigError(f"{where}.{key}: expected a list of per-channel numbers, got "
                              f"{values!r}")
    if "image_size" in data and data["image_size"] < 1:
        raise ConfigError(f"{where}.image_size: expected a positive size, got "
                          f"{data['image_size']!r}")
    if data.get("channels", 3) not in (1, 3):
        raise ConfigError(f"{where}.channels: expected 1 or 3, got {data['channels']!r}")
    classes = data.get("classes")
    if classes is not None and (not classes or len(set(map(str, classes))) != len(classes)):
        raise ConfigError(f"{where}.classes: expected the class names in label order, each "
                          f"once, got {classes!r}")
    if classes is not None and data.get("num_classes", len(classes)) != len(classes):
        raise ConfigError(f"{where}.classes: lists {len(classes)} classes but num_classes is "
                          f"{data['num_classes']}")
    if "sigma" in data:  # the noise it was trained at; 0 for a clean model
        check_sigma(data["sigma"], f"{where}.sigma", allow_zero=True)
    return ModelEntry(name=name, fields=dict(data), origin=where.split(":")[0])


def _validate_method(where: str, name: str, data: Any, models: Mapping[str, Any],
                     datasets: Iterable[str] | None) -> MethodEntry:
    _check_fields(where, data, METHOD_FIELDS)
    if "adapter" not in data:
        # Reported-only entry: the paper's numbers, no code. It must have something to show
        # and nothing that would need an adapter.
        if not data.get("reported"):
            raise ConfigError(f"{where}.adapter: missing (a 'module:Class' string; only a "
                              "reported-only entry with 'reported' rows may omit it)")
        for key in ("params", "datasets"):
            if key in data:
                raise ConfigError(f"{where}.{key}: a reported-only method (no adapter) cannot "
                                  "have params or datasets; add an adapter")
    elif not ADAPTER_RE.match(data["adapter"]):
        raise ConfigError(f"{where}.adapter: expected 'module:Class', got {data['adapter']!r}")
    if "paper" in data:
        _check_fields(f"{where}.paper", data["paper"], PAPER_FIELDS)
    known_datasets = set(datasets) if datasets is not None else None
    for dataset, block in (data.get("datasets") or {}).items():
        dwhere = f"{where}.datasets.{dataset}"
        if known_datasets is not None and dataset not in known_datasets:
            raise ConfigError(f"{dwhere}: {_unknown('dataset', str(dataset), known_datasets)}")
        if not isinstance(block, dict):
            raise ConfigError(f"{dwhere}: expected a mapping of model roles, got {block!r}")
        for role, ref in block.items():
            if role == "params":
                if not isinstance(ref, dict):
                    raise ConfigError(f"{dwhere}.params: expected a mapping, got {ref!r}")
                continue
            refs = ref.items() if isinstance(ref, dict) else [(None, ref)]
            for sigma, model in refs:
                fwhere = f"{dwhere}.{role}" + (f".{sigma}" if sigma is not None else "")
                if sigma is not None and (isinstance(sigma, bool)
                                          or not isinstance(sigma, (int, float))):
                    raise ConfigError(f"{fwhere}: sigma keys must be numbers, got {sigma!r}")
                if not isinstance(model, str):
                    raise ConfigError(f"{fwhere}: expected a model name, got {model!r}")
                if model not in models:
                    raise ConfigError(f"{fwhere}: {_unknown('model', model, models)}")
    reported = data.get("reported") or []
    for i, row in enumerate(reported):
        rwhere = f"{where}.reported[{i}]"
        _check_fields(rwhere, row, REPORTED_FIELDS)
        for req in ("dataset", "accuracy", "source"):
            if req not in row:
                raise ConfigError(f"{rwhere}.{req}: missing")
        for radius, acc in row["accuracy"].items():
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 100:
                raise ConfigError(
                    f"{rwhere}.accuracy.{radius}: expected a percentage in [0, 100], got {acc!r}"
                )
    return MethodEntry(
        name=name, adapter=data.get("adapter", ""), origin=where.split(":")[0],
        description=data.get("description", ""), paper=data.get("paper") or {},
        params=data.get("params") or {}, datasets=data.get("datasets") or {},
        reported=tuple(reported),
    )


def load_registry(path: str | Path | None = None, *, extra: Iterable[str | Path] = (),
                  datasets: Iterable[str] | None = None) -> Registry:
    """Read and validate the main registry plus any extra files (later files add entries).

    ``datasets``, when given, is the list of dataset names that method entries may use.
    """
    paths = [Path(path) if path else default_registry_path(), *(Path(p) for p in extra)]
    raw_models: dict[str, tuple[str, Any]] = {}
    raw_methods: dict[str, tuple[str, Any]] = {}
    for p in paths:
        data = _read_yaml(p)
        for key in data:
            if key not in ("models", "methods"):
                raise ConfigError(f"{p}: unknown top-level key {key!r}; allowed: models, methods")
        for section, target in (("models", raw_models), ("methods", raw_methods)):
            block = data.get(section) or {}
            if not isinstance(block, dict):
                raise ConfigError(f"{p}: {section}: expected a mapping of named entries")
            for name, entry in block.items():
                if name in target:
                    raise ConfigError(
                        f"{p}: {section}.{name}: already defined in {target[name][0]}; "
                        "pick another name"
                    )
                target[name] = (str(p), entry)
    models = {
        name: _validate_model(f"{origin}: models.{name}", name, entry)
        for name, (origin, entry) in raw_models.items()
    }
    methods = {
        name: _validate_method(f"{origin}: methods.{name}", name, entry, models, datasets)
        for name, (origin, entry) in raw_methods.items()
    }
    return Registry(models=models, methods=methods, files=[str(p) for p in paths])
