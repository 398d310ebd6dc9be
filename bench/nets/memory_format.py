"""Channels-last memory format, for the networks known to accept it (the harness's choice).

On a CPU, oneDNN's convolutions run about 1.7x faster on channels-last (NHWC) tensors than on
the default NCHW ones for the project's 28x28 ``mnist_cnn`` (docs/performance.md). Only the
layout changes, but the float results may differ in the last bit, so the format is part of a
run's identity when it is used (:func:`bench.running.plan.run_card`). It is applied only to a
network whose every module is either a ``torch.nn`` layer or a class of this project that
declares ``ACCEPTS_CHANNELS_LAST = True`` itself (not inherited: a subclass with its own
``forward`` might flatten with ``view``, which refuses channels-last activations); a user's
network is never converted.
"""

from __future__ import annotations

import torch
from torch import nn

CONTIGUOUS, CHANNELS_LAST, AUTO = "contiguous", "channels_last", "auto"
MEMORY_FORMATS = (CONTIGUOUS, CHANNELS_LAST, AUTO)  # --memory-format
_TORCH_LAYERS = "torch.nn.modules."  # torch's own layers take either layout


def _known(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.startswith(_TORCH_LAYERS) or \
        vars(cls).get("ACCEPTS_CHANNELS_LAST", False) is True


def accepts_channels_last(model: nn.Module) -> bool:
    """True when every module of ``model`` is known to accept channels-last inputs."""
    return isinstance(model, nn.Module) and all(_known(m) for m in model.modules())


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` converted in place: channels-last weights, and a pre-hook that gives it its
    input batch in channels-last (a copy for 3 channels; for one channel the plain NCHW batch
    already has channels-last strides)."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    x, *rest = args
    if torch.is_tensor(x) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)
