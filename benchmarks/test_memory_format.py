"""The certification forward of ``mnist_cnn`` (28x28) on a CPU: NCHW vs channels-last, by batch.

Run with ``nox -s bench -- -k memory_format``. Each round feeds the same pre-computed noisy
batches (8,192 samples of one 28x28 image at sigma 0.25) through the network behind its input
layer, as ``--memory-format contiguous`` and ``channels_last`` run it
(:mod:`bench.nets.memory_format`), at batch 256 and 1000; the summary line prints samples per
second. Measured numbers and the machine: docs/performance.md.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.nets import NormalizeLayer, build_arch
from bench.nets.memory_format import to_channels_last

SAMPLES, SIGMA = 8192, 0.25


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    net = torch.nn.Sequential(NormalizeLayer((0.286,), (0.353,)),
                              build_arch("mnist_cnn", num_classes=10, in_channels=1,
                                         image_size=28)).eval()
    return {"contiguous": net, "channels_last": to_channels_last(copy.deepcopy(net))}


def noisy_batches(batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 28, 28, generator=gen)
    return [x + SIGMA * torch.randn(min(batch, SAMPLES - start), 1, 28, 28, generator=gen)
            for start in range(0, SAMPLES, batch)]


def forward(net, batches) -> None:
    with torch.inference_mode():
        for b in batches:
            net(b).argmax(1)


@pytest.mark.parametrize("batch", [256, 1000])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_mnist_cnn_forward(benchmark, nets, memory_format, batch):
    batches = noisy_batches(batch)
    benchmark.extra_info["samples"] = SAMPLES
    benchmark.pedantic(forward, args=(nets[memory_format], batches), rounds=5, warmup_rounds=1)
    print(f"\nmnist_cnn {memory_format} batch {batch}: "
          f"{SAMPLES / benchmark.stats.stats.median:,.0f} samples/s (median of 5)")
