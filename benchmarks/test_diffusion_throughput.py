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

import pytest
import torch
from harness_timing import N0, SIGMA, FreeLogits, certify, median_seconds, noisy_batches

from bench.data.loaders import load_split
from bench.diffusion import Denoiser
from bench.nets import load_network
from bench.nets.loaders import ZOO_DIR
from bench.registry.entries import load_registry
from methods.dds import DDSClassifier
from methods.diffsmooth import DiffSmoothClassifier

N, M, REPEATS = 5_000, 5, 5

pytestmark = pytest.mark.skipif(not (ZOO_DIR / "digits-ddpm").is_dir(),
                                reason="train the zoo's digits-ddpm first")


@pytest.fixture(scope="module")
def setup():
    ds = load_split("digits")
    reg = load_registry(ZOO_DIR.parent.parent / "registry.yaml")

    def load(name):
        return load_network(name, reg.models[name].fields, dataset=ds.info, base_dir=".")

    den = Denoiser(load("digits-ddpm"), sigma=SIGMA).eval()
    clean, smoothed = load("digits-cnn-clean"), load("digits-cnn-gaussian-0.25")
    x, _ = ds[0]
    batches = noisy_batches(x, N)
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


def test_dds_certify(benchmark, setup):
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(setup["dds"], setup["x"], N), rounds=3, warmup_rounds=1)


def test_diffsmooth_certify(benchmark, setup):
    benchmark.extra_info["samples"] = N0 + N
    benchmark.pedantic(certify, args=(setup["diffsmooth"], setup["x"], N), rounds=3,
                       warmup_rounds=1)


@pytest.mark.parametrize(("method", "raw_fn"), [("dds", raw_dds), ("diffsmooth", raw_diffsmooth)])
def test_overhead_under_five_percent(setup, method, raw_fn):
    x = setup["x"]
    raw, full, harness = median_seconds(REPEATS, (raw_fn, setup), (certify, setup[method], x, N),
                                        (certify, FreeLogits(10), x, N))
    samples = N0 + N
    print(f"\n{method}: raw denoiser + classifier {samples / raw:,.0f} noisy samples/s; "
          f"certification {samples / full:,.0f} samples/s ({full / raw:.3f}x the raw time); "
          f"harness alone {1000 * harness:.1f} ms per {samples:,} samples = "
          f"{100 * harness / raw:.2f}% of the raw time")
    assert harness / raw < 0.05
