"""Models from other libraries: timm and torchvision classifiers, diffusion denoisers.

Off-the-shelf classifiers take their own resolution and normalization; DDS feeds them
denoised [0, 1] images of the dataset's size. :class:`ResizeNormalize` puts both inside the
model (bicubic, antialiased resize, then the model's mean/std), so every loaded model takes
[0, 1] pixels like the rest of the zoo. Offline, a missing download fails with one line that
names the model and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeNormalize(nn.Module):
    """[0, 1] images -> the classifier's resolution (bicubic, antialias) and normalization."""

    def __init__(self, size: int | None, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True,
                              align_corners=False)
        if x.shape[1] == 1 and self.mean.shape[1] == 3:  # grey images into an RGB model
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


def load_timm(name: str, entry: Mapping[str, Any], num_classes: int | None,
              path: Path | None, read_state) -> tuple[nn.Module, str | None]:
    """``timm.create_model(arch)``: Hub weights, or the local file at ``path``."""
    import timm  # lazy: timm is optional and slow to import

    arch = _arch(name, entry)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        if path is not None:  # our own loading: timm would drop a head of another size
            net = timm.create_model(arch, pretrained=False, **kwargs)
            net.load_state_dict(read_state(net))
        else:
            net = timm.create_model(arch, pretrained=True, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"model {name}: timm has no model {arch!r}; fix the entry's arch") \
                from exc
        raise _offline(name, f"timm model {arch!r}", exc) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise _offline(name, f"timm model {arch!r}", exc) from exc
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    size = entry.get("image_size") or (cfg.get("input_size") or (None, None, None))[-1]
    mean = entry.get("mean") or cfg.get("mean") or IMAGENET_MEAN
    std = entry.get("std") or cfg.get("std") or IMAGENET_STD
    return nn.Sequential(ResizeNormalize(size, mean, std), net), None


def load_torchvision(name: str, entry: Mapping[str, Any], num_classes: int | None,
                     path: Path | None, read_state) -> tuple[nn.Module, str | None]:
    """``torchvision.models.get_model(arch)``: default weights, or a local state dict."""
    import torchvision  # lazy: torchvision takes seconds to import

    arch = _arch(name, entry)
    try:
        if path is not None:
            kwargs = {"num_classes": num_classes} if num_classes is not None else {}
            net = torchvision.models.get_model(arch, weights=None, **kwargs)
            state = read_state(net)
            net.load_state_dict(state)
        else:
            net = torchvision.models.get_model(arch, weights="DEFAULT")
    except ValueError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"model {name}: torchvision has no model {arch!r}; fix the "
                              "entry's arch") from exc
        raise _offline(name, f"torchvision model {arch!r}", exc) from exc
    except (OSError, RuntimeError) as exc:
        raise _offline(name, f"torchvision model {arch!r}", exc) from exc
    size = entry.get("image_size") or 224
    mean = entry.get("mean") or IMAGENET_MEAN
    std = entry.get("std") or IMAGENET_STD
    return nn.Sequential(ResizeNormalize(size, mean, std), net), None


def _arch(name: str, entry: Mapping[str, Any]) -> str:
    arch = entry.get("arch")
    if not arch:
        raise ConfigError(f"model {name}: set 'arch' to the library's model name")
    return str(arch)


def _offline(name: str, what: str, exc: BaseException) -> ModelError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelError(
        f"model {name}: cannot load the weights of {what} ({first}); they are not in the local "
        "cache and could not be downloaded: run once online to cache them, or set the entry's "
        "path to a local weights file"
    )
