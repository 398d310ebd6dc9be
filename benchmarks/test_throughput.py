"""Harness overhead: certification throughput vs raw forward passes on the same noisy batches.

Run with ``nox -s bench``. The raw loop feeds the base classifier exactly the batches the
certification draws (pre-computed), so the difference is what the harness adds: seeded noise
generation, the add, label counting and the statistics. Target: under 5% on CPU.

The overhead is the harness alone over the raw passes (see harness_timing).
"""

from __future__ import annotations

import pytest
import torch
from harness_timing import N0, FreeLogits, certify, median_seconds, noisy_batches

from bench.data.loaders import load_split
from bench.nets import load_network

N, REPEATS = 20_000, 15


@pytest.fixture(scope="module")
def setup():
    ds = load_split("digits")
    net = load_network("digits-cnn-gaussian-0.25",
                       {"source": "zoo", "path": "digits-cnn-gaussian-0.25.safetensors"},
                       dataset=ds.info, base_dir=".")
    x, _ = ds[0]
    return net, x, noisy_batches(x, N)


def raw_forward(net, batches):
    with torch.inference_mode():
        for batch in batches:
            net(batch).argmax(1)


def test_raw_forward(benchmark, setup):
    net, _, batches = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(raw_forward, args=(net, batches), rounds=7, warmup_rounds=1)


def test_certify(benchmark, setup):
    net, x, _ = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(net, x, N), rounds=7, warmup_rounds=1)


def test_harness_alone(benchmark, setup):
    _, x, _ = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(FreeLogits(10), x, N), rounds=15, warmup_rounds=1)


def test_overhead_under_five_percent(setup):
    net, x, batches = setup
    raw, full, harness = median_seconds(REPEATS, (raw_forward, net, batches),
                                        (certify, net, x, N), (certify, FreeLogits(10), x, N))
    samples = N0 + N
    print(f"\nraw forward {samples / raw:,.0f} samples/s; certification {samples / full:,.0f} "
          f"samples/s; harness alone {1000 * harness:.1f} ms per {samples:,} samples = "
          f"{100 * harness / raw:.1f}% of the raw forward time")
    assert harness / raw < 0.05
