"""Architecture names the registry may use, and the builders behind them.

Names match the ``arch`` strings that Cohen et al.'s checkpoints declare (``cifar_resnet20``,
``cifar_resnet110``, ``resnet50``), so a checkpoint's own declaration can pick the builder.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Protocol

from torch import nn

from bench.errors import ModelError
from bench.nets.cifar_resnet import CifarResNet
from bench.nets.small_cnn import SmallCNN


class ArchBuilder(Protocol):
    def __call__(self, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


def _digits_cnn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(in_channels, image_size, num_classes, pools=1)


def _mnist_cnn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(in_channels, image_size, num_classes, pools=2)


def _cifar_resnet(depth: int) -> ArchBuilder:
    def build(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        # The fixed 8x8 average pool of the reference layout only reduces 32x32 inputs to 1x1.
        _require(f"cifar_resnet{depth}", image_size == 32, f"32x32 images, got {image_size}")
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    return build


def _resnet50(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    _require("resnet50", in_channels == 3, f"3-channel images, got {in_channels}")
    from torchvision.models import resnet50  # lazy: torchvision is slow to import

    return resnet50(weights=None, num_classes=num_classes)


def _require(arch: str, ok: bool, expectation: str) -> None:
    if not ok:
        raise ModelError(f"architecture {arch!r} expects {expectation}")


ARCHITECTURES: dict[str, ArchBuilder] = {
    "digits_cnn": _digits_cnn,
    "mnist_cnn": _mnist_cnn,
    "cifar_resnet20": _cifar_resnet(20),
    "cifar_resnet110": _cifar_resnet(110),
    "resnet50": _resnet50,
}


def build_arch(name: str, *, num_classes: int, in_channels: int, image_size: int,
               search_dir: str | Path | None = None) -> nn.Module:
    """A freshly initialised network of architecture ``name`` (no input layer).

    ``name`` is a built-in architecture, or your own as ``module:callable``: a function (or
    class) called as ``callable(num_classes=, in_channels=, image_size=)`` that returns an
    ``nn.Module`` producing logits. The module is imported from ``search_dir`` first (the
    folder of the registry file that names it), then from ``sys.path``.
    """
    if ":" in name:
        builder = _user_builder(name, search_dir)
    else:
        builder = ARCHITECTURES.get(name)
    if builder is None:
        known = ", ".join(ARCHITECTURES)
        raise ModelError(f"unknown architecture {name!r}; known: {known}, or module:callable "
                         "for your own")
    try:
        net = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    except TypeError as exc:
        raise ModelError(f"architecture {name!r} must accept num_classes=, in_channels= and "
                         f"image_size= keywords ({exc})") from exc
    if not isinstance(net, nn.Module):
        raise ModelError(f"architecture {name!r} returned {type(net).__name__}, not an "
                         "nn.Module")
    return net


def _user_builder(spec: str, search_dir: str | Path | None) -> ArchBuilder:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"architecture {spec!r}: expected module:callable, e.g. my_nets:lenet")
    added = None
    if search_dir is not None:
        added = str(Path(search_dir).resolve())
        sys.path.insert(0, added)
    try:
        module = _import_fresh(module_name, added)
    except ImportError as exc:
        where = f"{search_dir} or " if search_dir is not None else ""
        raise ModelError(f"architecture {spec!r}: cannot import {module_name!r} ({exc}); put "
                         f"{module_name}.py in {where}a folder on PYTHONPATH") from exc
    finally:
        if added is not None:
            sys.path.remove(added)
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ModelError(f"architecture {spec!r}: {module_name} has no callable {attr!r}")
    return builder


def _import_fresh(module_name: str, folder: str | None):
    """``module_name``, from ``folder`` when it holds it: a module of that name imported
    earlier from another folder (another registry's ``my_nets``) is not reused."""
    cached = sys.modules.get(module_name)
    if folder is not None and cached is not None:
        where = getattr(cached, "__file__", None)
        if where is None or Path(where).resolve().parent != Path(folder):
            candidate = Path(folder) / f"{module_name}.py"
            if candidate.is_file():
                del sys.modules[module_name]
    return importlib.import_module(module_name)

