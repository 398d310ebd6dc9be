"""Architecture names the registry may use, and the builders behind them.

Names match the ``arch`` strings that Cohen et al.'s checkpoints declare (``cifar_resnet20``,
``cifar_resnet110``, ``resnet50``), so a checkpoint's own declaration can pick the builder.
"""

from __future__ import annotations

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


def build_arch(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A freshly initialised network of architecture ``name`` (no input layer)."""
    builder = ARCHITECTURES.get(name)
    if builder is None:
        known = ", ".join(ARCHITECTURES)
        raise ModelError(f"unknown architecture {name!r}; known: {known}")
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
