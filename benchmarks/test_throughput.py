"""Harness overhead: certification throughput vs raw forward passes on the same noisy batches.

Run with ``nox -s bench``. The raw loop feeds the base classifier exactly the batches the
certification draws (pre-computed), so the difference is what the harness adds: seeded noise
generation, the add, label counting and the statistics. Target: under 5% on CPU.

The overhead is measured as the time of the harness alone (a certification whose base
classifier returns pre-computed logits for free) over the time of the raw forward passes.
Both are stable on a shared VM, where the direct difference of two ~0.5 s timings drifts by
+-10% from one run to the next and would hide a 2-3% effect.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.datasets import load_split
from bench.nets import load_network
from bench.runner import RunOptions
from bench.smoothing import PHASE_ESTIMATE, PHASE_SELECT, NoiseStream, Smooth

N0, N, SIGMA, REPEATS = 100, 20_000, 0.25, 15
BATCH = RunOptions.batch  # the CLI default


class FreeLogits:
    """A base classifier that costs nothing: it returns pre-computed logits."""

    def __init__(self, num_classes: int):
        self.logits = torch.randn(BATCH, num_classes)
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


@pytest.fixture(scope="module")
def setup():
    ds = load_split("digits")
    net = load_network("digits-cnn-gaussian-0.25",
                       {"source": "zoo", "path": "digits-cnn-gaussian-0.25.safetensors"},
                       dataset=ds.info, base_dir=".")
    x, _ = ds[0]
    batches = []
    for phase, num in ((PHASE_SELECT, N0), (PHASE_ESTIMATE, N)):
        stream = NoiseStream(x.shape, "cpu", 0, 0, phase)
        for start in range(0, num, BATCH):
            b = min(BATCH, num - start)
            batches.append(torch.add(x, stream.fill(torch.empty(b, *x.shape)), alpha=SIGMA))
    return net, x, batches


def raw_forward(net, batches):
    with torch.inference_mode():
        for batch in batches:
            net(batch).argmax(1)


def certify(base, x):
    Smooth(base, 10, SIGMA).certify_record(x, N0, N, 0.001, BATCH)


def median_seconds(*calls) -> list[float]:
    """Median wall time of each (fn, *args) call, the calls interleaved round by round."""
    for fn, *args in calls:
        fn(*args)  # warm-up
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(REPEATS):
        for i, (fn, *args) in enumerate(calls):
            start = time.perf_counter()
            fn(*args)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def test_raw_forward(benchmark, setup):
    net, _, batches = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(raw_forward, args=(net, batches), rounds=7, warmup_rounds=1)


def test_certify(benchmark, setup):
    net, x, _ = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(net, x), rounds=7, warmup_rounds=1)


def test_harness_alone(benchmark, setup):
    _, x, _ = setup
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(FreeLogits(10), x), rounds=15, warmup_rounds=1)


def test_overhead_under_five_percent(setup):
    net, x, batches = setup
    raw, full, harness = median_seconds((raw_forward, net, batches), (certify, net, x),
                                        (certify, FreeLogits(10), x))
    samples = N0 + N
    print(f"\nraw forward {samples / raw:,.0f} samples/s; certification {samples / full:,.0f} "
          f"samples/s; harness alone {1000 * harness:.1f} ms per {samples:,} samples = "
          f"{100 * harness / raw:.1f}% of the raw forward time")
    assert harness / raw < 0.05
