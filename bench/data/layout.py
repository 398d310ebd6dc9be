"""The layout of image tensors: every batch a model receives is row-major (plain NCHW).

Used wherever a batch is built (the class-folder loader, Smooth, the feasibility estimate, the
model probe), so a model that flattens with ``x.view(x.size(0), -1)`` sees the layout it was
written for, whatever the data's source.
"""

from __future__ import annotations

import torch


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides (NCHW for a batch): itself when it has them, else a copy.

    A one-channel image from ``ToTensor`` has strides (1, W, 1), a permuted or channels-last
    tensor others; a batch built from one can look channels-last to the convolutions, whose
    output then breaks a model that flattens with ``x.view(x.size(0), -1)``. ``contiguous()``
    does not help: it counts size-1 dimensions as contiguous whatever their stride."""
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= max(size, 1)
    if tuple(reversed(expected)) == x.stride():
        return x
    return x.clone(memory_format=torch.contiguous_format)
