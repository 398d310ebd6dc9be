"""Loading registry models from local checkpoint files, and saving our own zoo models.

Every file is hash-checked (when the registry gives a sha256) before it is parsed, parsed only
with ``torch.load(weights_only=True)`` or safetensors, and compared key by key with the built
architecture before ``load_state_dict``, so a wrong file fails with one readable line instead
of a traceback. The returned model takes [0, 1] pixels: its input layer comes first.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bench.contract import DatasetInfo
from bench.diffusion import load_diffusers, load_python
from bench.errors import ConfigError, ModelError
from bench.nets import external
from bench.nets.archs import ARCHITECTURES, build_arch
from bench.nets.normalize import InputCenterLayer, NormalizeLayer
from bench.registry.download import download_command, is_page_url
from bench.registry.entries import INPUT_LAYERS as REGISTRY_INPUT_LAYERS
from bench.registry.entries import MODEL_SOURCES, default_registry_path

# The package's own model folder; relative ``zoo`` paths resolve against it.
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
SOURCES, INPUT_LAYERS = MODEL_SOURCES, REGISTRY_INPUT_LAYERS
# Sources loaded through another library (bench.nets.external, bench.diffusion).
EXTERNAL_SOURCES = ("timm", "torchvision", "diffusers", "python")
# Where training scripts nest the weights inside a saved dict.
_NESTED_KEYS = ("state_dict", "net", "model")
# Wrapper prefixes: DataParallel's ``module.`` and ``Sequential(input_layer, net)``'s ``1.``.
_WRAPPER_PREFIXES = ("module.", "1.")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so large checkpoints stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Checkpoint:
    """A parsed file: its weights and the architecture it declares, if any."""

    state: dict[str, torch.Tensor]
    arch: str | None = None
    arch_origin: str = "the file"  # who declares ``arch``, for error messages


def load_network(
    name: str,
    entry: Mapping[str, Any],
    *,
    dataset: DatasetInfo,
    device: torch.device | str = "cpu",
    base_dir: Path,
) -> nn.Module:
    """The registry model ``name`` as ``Sequential(input_layer, net)`` in eval mode on ``device``.

    ``entry`` keys: ``source`` (zoo, cohen, state_dict or auto; default auto), ``path``,
    ``arch``, ``sha256``, ``input_layer`` (normalize, center or none; default normalize) and
    ``num_classes`` (default: the dataset's).
    """
    source = str(entry.get("source", "auto"))
    if source not in SOURCES:
        raise ConfigError(
            f"model {name}: unknown source {source!r}; use one of {', '.join(SOURCES)}"
        )
    layer_kind = str(entry.get("input_layer", "normalize"))
    if layer_kind not in INPUT_LAYERS:
        allowed = ", ".join(INPUT_LAYERS)
        raise ConfigError(f"model {name}: unknown input_layer {layer_kind!r}; use one of {allowed}")
    num_classes = _num_classes(name, entry, dataset)
    if source in EXTERNAL_SOURCES:
        model = _load_external(name, source, entry, num_classes, Path(base_dir))
        return model.to(device).eval()
    path = _resolve_path(name, entry, source, Path(base_dir))

    sha256 = _checked_sha256(name, path, entry.get("sha256"))

    ckpt = _read_checkpoint(name, path, source)
    arch = _resolve_arch(name, path, entry.get("arch"), ckpt)
    channels, height, _ = dataset.shape
    try:
        net = build_arch(arch, num_classes=num_classes, in_channels=channels, image_size=height,
                         search_dir=entry.get("registry_dir"))
    except (ModelError, ValueError) as exc:
        raise ModelError(f"model {name}: {exc}") from exc
    net.load_state_dict(_fit_state(name, path, arch, ckpt.state, net))

    layer = _input_layer(layer_kind, dataset, entry.get("mean"), entry.get("std"))
    model = net if layer is None else nn.Sequential(layer, net)
    model.checkpoint_sha256 = sha256  # recorded in run cards
    return model.to(device).eval()


def _load_external(name: str, source: str, entry: Mapping[str, Any], num_classes: int,
                   base_dir: Path) -> nn.Module:
    """timm/torchvision classifiers (resize + own normalization inside) and denoisers.

    Classifiers keep the library's class count unless the entry sets ``num_classes``.
    """
    classes = entry.get("num_classes")
    if source == "python":
        model = load_python(name, str(entry["path"]))
        model.checkpoint_sha256 = _source_sha256(type(model.net))
        return model
    if source == "diffusers":
        folder = _diffusers_folder(entry["path"], base_dir)
        model = load_diffusers(name, str(folder) if folder else str(entry["path"]))
        sha = None
        if folder is not None:
            weights = next(iter(sorted(folder.glob("unet/*.safetensors"))
                                + sorted(folder.glob("*.safetensors"))
                                + sorted(folder.glob("unet/*.bin")) + sorted(folder.glob("*.bin"))),
                           None)
            sha = _checked_sha256(name, weights, entry.get("sha256")) if weights else None
        model.checkpoint_sha256 = sha
        return model
    path = _resolve_path(name, entry, source, base_dir) if entry.get("path") else None
    sha = _checked_sha256(name, path, entry.get("sha256")) if path else None

    def read_state(net):
        ckpt = _read_checkpoint(name, path, "auto")
        return _fit_state(name, path, str(entry["arch"]), ckpt.state, net)

    load = external.load_timm if source == "timm" else external.load_torchvision
    model, _ = load(name, entry, classes, path, read_state)
    model.checkpoint_sha256 = sha
    return model


def _source_sha256(cls: type) -> str | None:
    """A code-defined denoiser is identified by its source file (its weights are its code)."""
    try:
        return sha256_file(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError):
        return None


def _diffusers_folder(raw: Any, base_dir: Path) -> Path | None:
    """A local diffusers folder: absolute, in the zoo, or under the models dir; else None
    (then ``raw`` is a Hub repo id)."""
    path = Path(str(raw)).expanduser()
    for candidate in ([path] if path.is_absolute() else [ZOO_DIR / path, base_dir / path, path]):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def save_zoo_model(net: nn.Module, path: Path, card: Mapping[str, Any]) -> str:
    """Write ``net``'s bare state dict as safetensors plus its model card; return the sha256.

    A ``Sequential(input_layer, net)`` or a DataParallel wrapper is unwrapped so the file holds
    the bare net, and the card records which input layer it was trained behind.
    """
    bare, layer_kind = _unwrap(net)
    card_out = dict(card)
    if layer_kind is not None:
        declared = card_out.setdefault("input_layer", layer_kind)
        if declared != layer_kind:
            raise ValueError(
                f"card says input_layer {declared!r} but the model uses {layer_kind!r}"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in bare.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    card_out["sha256"] = sha256_file(path)
    text = json.dumps(card_out, indent=2) + "\n"  # serialise before writing: no half-written card
    path.with_suffix(".json").write_text(text, encoding="utf-8")
    return card_out["sha256"]


def _unwrap(net: nn.Module) -> tuple[nn.Module, str | None]:
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module
    if isinstance(net, nn.Sequential) and len(net) == 2:
        first = net[0]
        if isinstance(first, NormalizeLayer):
            return _unwrap(net[1])[0], "normalize"
        if isinstance(first, InputCenterLayer):
            return _unwrap(net[1])[0], "center"
    return net, None


def _num_classes(name: str, entry: Mapping[str, Any], dataset: DatasetInfo) -> int:
    value = entry.get("num_classes", dataset.num_classes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {name}: num_classes must be a positive integer, got {value!r}")
    return value


def _resolve_path(name: str, entry: Mapping[str, Any], source: str, base_dir: Path) -> Path:
    raw = entry.get("path")
    if not raw:
        raise ConfigError(f"model {name}: the registry entry has no 'path'")
    path = Path(str(raw)).expanduser()
    root = ZOO_DIR if source == "zoo" else base_dir
    beside = entry.get("registry_dir")  # a relative path next to the registry file naming it
    if not path.is_absolute() and source != "zoo" and beside and (Path(beside) / path).is_file():
        path = Path(beside) / path
    elif not path.is_absolute():
        path = root / path
    if not path.is_file():
        how = "or set the entry's path"
        if source != "zoo":
            how = "set the entry's path, or pass --models-dir"
        fetch, url = "", entry.get("url")
        if url:  # where it comes from, and the command that fetches a linked file
            command = download_command(name)
            if Path(base_dir) != Path(os.environ.get("CERTBENCH_MODELS", "models")):
                command += f" --models-dir {base_dir}"
            beside = entry.get("registry_dir")
            extra = (" and the run's --registry/--extra-registry options" if beside and
                     Path(beside).resolve() != default_registry_path().resolve().parent else "")
            fetch = (f"; it comes from {url} (a web page: download the file there by hand)"
                     if is_page_url(str(url)) else
                     f"; or fetch it from {url} with '{command}'{extra}")
        raise ModelError(
            f"model {name}: checkpoint file {path} not found (relative paths resolve beside "
            f"the registry file, then against {root}); place the file there, {how}{fetch}"
        )
    return path


def _checked_sha256(name: str, path: Path, expected: Any) -> str:
    """The file's sha256, which must equal ``expected`` when the registry pins one."""
    actual = sha256_file(path)
    if not expected:
        return actual
    want = str(expected).strip().lower().removeprefix("sha256:")
    if actual != want:
        raise ModelError(
            f"model {name}: {path} has sha256 {actual[:12]}…, the registry expects {want[:12]}…; "
            "re-download the file or update the entry's sha256"
        )
    return actual


def _read_checkpoint(name: str, path: Path, source: str) -> _Checkpoint:
    """Parse ``path`` according to ``source`` (auto: by content)."""
    if _is_safetensors(path):
        if source == "cohen":
            raise ModelError(
                f"model {name}: {path} is a safetensors file, not a Cohen-format checkpoint; "
                "use source 'state_dict' or 'auto'"
            )
        return _read_safetensors(name, path)
    if source == "zoo":
        raise ModelError(
            f"model {name}: {path} is not a safetensors file; zoo models are stored as "
            ".safetensors (use source 'state_dict' or 'auto' for other files)"
        )
    obj = _torch_load(name, path)
    is_cohen = isinstance(obj, Mapping) and ("state_dict" in obj or "net" in obj)
    if source == "cohen" and not is_cohen:
        raise ModelError(
            f"model {name}: {path} is not a Cohen-format checkpoint (a dict with 'arch' and "
            "'state_dict', or MACER's 'net'); use source 'state_dict' or 'auto'"
        )
    state = _extract_state(name, path, obj)
    arch = obj.get("arch") if isinstance(obj, Mapping) else None
    return _Checkpoint(state, arch if isinstance(arch, str) and arch else None)


def _is_safetensors(path: Path) -> bool:
    """Safetensors files start with a little-endian u64 header length and a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _read_safetensors(name: str, path: Path) -> _Checkpoint:
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"model {name}: {path} is not a valid safetensors file ({exc})") from exc
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        return _Checkpoint(state)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {name}: model card {card_path} is not valid JSON ({exc})") from exc
    arch = card.get("arch") if isinstance(card, dict) else None
    if isinstance(arch, str) and arch:
        return _Checkpoint(state, arch, f"its model card {card_path.name}")
    return _Checkpoint(state)


def _torch_load(name: str, path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f"it pickles {found.group(1)}" if found else "it cannot be unpickled safely"
        raise ModelError(
            f"model {name}: {path} is not a weights-only checkpoint ({detail}); certbench loads "
            "files only with torch.load(weights_only=True): re-save just the state dict, e.g. "
            "torch.save(model.state_dict(), path)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as exc:
        # torch.load itself hands a file that starts like safetensors to safetensors.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model {name}: {path} cannot be read as a checkpoint ({first}); it may be "
            "truncated or damaged: download or save it again"
        ) from exc


def _nested_state(obj: Mapping[str, Any]) -> str | None:
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            return key
    return None


def _extract_state(name: str, path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The state dict in ``obj``: bare, or under 'state_dict', 'net' or 'model'."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"model {name}: {path} holds a {type(obj).__name__}, not a state dict")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = _nested_state(obj)
        if key is None:
            raise ModelError(
                f"model {name}: {path} holds no state dict (expected a bare one or one under "
                f"{', '.join(repr(k) for k in _NESTED_KEYS)})"
            )
        obj = obj[key]
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"model {name}: {path}: state dict entry {key!r} is a {type(value).__name__}, "
                "not a tensor"
            )
        state[str(key)] = value
    return state


def _resolve_arch(name: str, path: Path, entry_arch: Any, ckpt: _Checkpoint) -> str:
    if entry_arch and ckpt.arch and entry_arch != ckpt.arch:
        raise ModelError(
            f"model {name}: {path}: {ckpt.arch_origin} declares architecture {ckpt.arch!r} but "
            f"the registry entry says {entry_arch!r}; fix the entry's arch"
        )
    arch = entry_arch or ckpt.arch
    if not arch:
        raise ModelError(
            f"model {name}: cannot tell the architecture of {path}; set 'arch' in its registry "
            f"entry (known: {', '.join(ARCHITECTURES)})"
        )
    return str(arch)


def _strip_wrappers(
    state: dict[str, torch.Tensor], wanted: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes shared by every key, keeping the variant closest to ``wanted``.

    Cohen's CIFAR files carry ``1.`` and his ImageNet files ``1.module.``; stopping at the
    best match keeps a net whose own keys all start with ``1.`` intact.
    """
    wanted_keys = set(wanted)
    best, best_overlap = state, len(wanted_keys.intersection(state))
    current = state
    while current:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = {k[len(prefix) :]: v for k, v in current.items()}
        overlap = len(wanted_keys.intersection(current))
        if overlap >= best_overlap:
            best, best_overlap = current, overlap
    return best


def _fit_state(
    name: str, path: Path, arch: str, state: dict[str, torch.Tensor], net: nn.Module
) -> dict[str, torch.Tensor]:
    """``state`` renamed to fit ``net``, or a one-line ModelError listing what does not fit."""
    expected = net.state_dict()
    state = dict(_strip_wrappers(state, expected))
    for key, value in expected.items():
        # BatchNorm counters that old PyTorch versions did not save play no part in inference.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return state
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')} (first: {missing[0]})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')} (first: {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{_count(len(mismatched), 'shape mismatch', 'es')} (first: {k} ckpt "
            f"{_shape(state[k])} vs model {_shape(expected[k])})"
        )
    raise ModelError(
        f"model {name}: {path} does not fit architecture {arch}: {', '.join(parts)}; "
        "check the entry's arch and num_classes"
    )


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _input_layer(kind: str, dataset: DatasetInfo, mean=None, std=None) -> nn.Module | None:
    """The normalization a network was trained with: the model entry's own ``mean``/``std``
    when it has them (e.g. ImageNet statistics), else the dataset's."""
    mean = dataset.mean if mean is None else tuple(float(v) for v in mean)
    std = dataset.std if std is None else tuple(float(v) for v in std)
    if kind == "normalize":
        return NormalizeLayer(mean, std)
    if kind == "center":
        return InputCenterLayer(mean)
    return None
