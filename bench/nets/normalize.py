"""Input layers that sit first inside a model, after the harness has added its noise.

Randomized smoothing certifies the classifier on raw [0, 1] pixels, so normalization must be
part of the network rather than of the data pipeline. The statistics are non-persistent
buffers: they follow ``.to(device)`` but never appear in state dicts, exactly like the layers
of Cohen et al. and SmoothAdv, whose checkpoints hold no entries for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _channel_stats(values: Sequence[float], what: str) -> torch.Tensor:
    """A (1, C, 1, 1) float tensor that broadcasts over a (B, C, H, W) batch."""
    stats = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if stats.ndim != 1 or stats.numel() == 0:
        raise ValueError(f"{what} must be a non-empty sequence of per-channel values")
    return stats.view(1, -1, 1, 1)


class NormalizeLayer(nn.Module):
    """Subtracts the per-channel mean and divides by the per-channel std."""

    ACCEPTS_CHANNELS_LAST = True  # broadcasting keeps the layout (bench.nets.memory_format)

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = _channel_stats(mean, "mean")
        std_t = _channel_stats(std, "std")
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError("std must be positive in every channel")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class InputCenterLayer(nn.Module):
    """Subtracts the per-channel mean only, as SmoothAdv's released models expect."""

    ACCEPTS_CHANNELS_LAST = True  # broadcasting keeps the layout (bench.nets.memory_format)

    mean: torch.Tensor

    def __init__(self, mean: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", _channel_stats(mean, "mean"), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}"
