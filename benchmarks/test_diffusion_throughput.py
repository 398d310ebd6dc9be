"""DDS and DiffSmooth throughput on CPU vs the raw denoiser + classifier passes on the same batches.

Run with ``nox -s bench`` (needs the zoo's digits-ddpm). The raw loops run exactly the network
work of the base classifier on the pre-computed noisy batches of a certification: for DDS one
denoiser and one classifier pass per sample, for DiffSmooth one denoiser pass and m classifier
passes (on the denoised image plus the fixed local draws). As in test_throughput.py the
harness overhead is the time of the harness alone (a certification whose base classifier costs
nothing) over the raw time, which is stable on a shared VM where the difference of two noisy
timings is not.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.datasets import load_split
from bench.diffusion import Denoiser
from bench.nets import load_network
from bench.nets.loaders import ZOO_DIR
from bench.registry import load_registry
from bench.runner import RunOptions
from bench.smoothing import PHASE_ESTIMATE, PHASE_SELECT, NoiseStream, Smooth
from methods.dds import DDSClassifier
from methods.diffsmooth import DiffSmoothClassifier

N0, N, SIGMA, M, REPEATS = 100, 5_000, 0.25, 5, 5
BATCH = RunOptions.batch  # the CLI default

pytestmark = pytest.mark.skipif(not (ZOO_DIR / "digits-ddpm").is_dir(),
                                reason="train the zoo's digits-ddpm first")


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
    reg = load_registry(ZOO_DIR.parent.parent / "registry.yaml")

    def load(name):
        return load_network(name, reg.models[name].fields, dataset=ds.info, base_dir=".")

    den = Denoiser(load("digits-ddpm"), sigma=SIGMA).eval()
    clean, smoothed = load("digits-cnn-clean"), load("digits-cnn-gaussian-0.25")
    x, _ = ds[0]
    batches = []
    for phase, num in ((PHASE_SELECT, N0), (PHASE_ESTIMATE, N)):
        stream = NoiseStream(x.shape, "cpu", 0, 0, phase)
        for start in range(0, num, BATCH):
            b = min(BATCH, num - start)
            batches.append(torch.add(x, stream.fill(torch.empty(b, *x.shape)), alpha=SIGMA))
    dds = DDSClassifier(den, clean, 10).eval()
    ds_base = DiffSmoothClassifier(den, smoothed, 10, shape=ds.info.shape, m=M,
                                   local_sigma=0.25).eval()
    return {"x": x, "batches": batches, "den": den, "clean": clean, "smoothed": smoothed,
            "dds": dds, "diffsmooth": ds_base}


def raw_dds(s):
    with torch.inference_mode():
        for batch in s["batches"]:
            s["clean"](s["den"](batch)).argmax(1)


def raw_diffsmooth(s):
    noise = s["diffsmooth"].fixed_noise
    with torch.inference_mode():
        for batch in s["batches"]:
            clean = s["den"](batch)
            local = (clean.unsqueeze(1) + 0.25 * noise).flatten(0, 1)
            s["smoothed"](local).softmax(1).view(len(batch), M, -1).mean(1).argmax(1)


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


def test_dds_certify(benchmark, setup):
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(setup["dds"], setup["x"]), rounds=3, warmup_rounds=1)


def test_diffsmooth_certify(benchmark, setup):
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(setup["diffsmooth"], setup["x"]), rounds=3,
                       warmup_rounds=1)


@pytest.mark.parametrize(("method", "raw_fn"), [("dds", raw_dds), ("diffsmooth", raw_diffsmooth)])
def test_overhead_under_five_percent(setup, method, raw_fn):
    x = setup["x"]
    raw, full, harness = median_seconds((raw_fn, setup), (certify, setup[method], x),
                                        (certify, FreeLogits(10), x))
    samples = N0 + N
    print(f"\n{method}: raw denoiser + classifier {samples / raw:,.0f} noisy samples/s; "
          f"certification {samples / full:,.0f} samples/s ({full / raw:.3f}x the raw time); "
          f"harness alone {1000 * harness:.1f} ms per {samples:,} samples = "
          f"{100 * harness / raw:.2f}% of the raw time")
    assert harness / raw < 0.05
