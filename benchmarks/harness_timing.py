"""What both throughput benchmarks share: the certification's own noisy batches, a base
classifier that costs nothing, and interleaved median timings.

The overhead is measured as the time of the harness alone (a certification whose base
classifier returns pre-computed logits for free) over the time of the raw network passes on
the same batches: both are stable on a shared VM, where the direct difference of two noisy
timings drifts by +-10% from one run to the next.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.certify.noise import PHASE_ESTIMATE, PHASE_SELECT, NoiseStream
from bench.certify.smoothing import Smooth
from bench.running.plan import RunOptions

BATCH = RunOptions.batch  # the CLI default
N0, SIGMA, ALPHA = 100, 0.25, 0.001


class FreeLogits:
    """A base classifier that costs nothing: it returns pre-computed logits."""

    def __init__(self, num_classes: int):
        self.logits = torch.randn(BATCH, num_classes)
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def noisy_batches(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Exactly the batches a certification of image 0 (seed 0) feeds its base classifier."""
    batches = []
    for phase, num in ((PHASE_SELECT, N0), (PHASE_ESTIMATE, n)):
        stream = NoiseStream(x.shape, "cpu", 0, 0, phase)
        for start in range(0, num, BATCH):
            b = min(BATCH, num - start)
            batches.append(torch.add(x, stream.fill(torch.empty(b, *x.shape)), alpha=SIGMA))
    return batches


def certify(base, x: torch.Tensor, n: int) -> None:
    Smooth(base, 10, SIGMA).certify_record(x, N0, n, ALPHA, BATCH)


def median_seconds(repeats: int, *calls) -> list[float]:
    """Median wall time of each (fn, *args) call, the calls interleaved round by round."""
    for fn, *args in calls:
        fn(*args)  # warm-up
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, (fn, *args) in enumerate(calls):
            start = time.perf_counter()
            fn(*args)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
