"""GPU throughput at CIFAR-10 size: raw forward passes vs full certification through the harness.

Run with ``nox -s bench-gpu`` (``nox -s bench-gpu -- --bf16`` adds bf16 autocast rows). Two base
classifiers with random weights (throughput does not depend on them), 3x32x32 inputs, 10
classes:

- ``gaussian``: Cohen et al.'s CIFAR model, their normalize layer + ``cifar_resnet110``;
- ``dds``: a diffusers ``UNet2DModel`` configured as ``google/ddpm-cifar10-32`` (linear betas
  1e-4..0.02, T=1000) denoising in one step at the timestep matching sigma
  (``bench.diffusion.DenoisedClassifier``), followed by the same ResNet-110.

For each (model, mode) the raw loop runs the base classifier (plus argmax) on exactly the noisy
batches a certification of one image draws, pre-computed on the device; the certification is
``Smooth.certify_record`` (n0 + n samples: seeded noise on the device, counting, the
statistics). Both are timed interleaved (median of the rounds, after a warm-up round), with a
device sync, and reported as samples per second; ratio = certify / raw throughput.

Opt-in, so that ``nox -s bench`` and a plain ``pytest`` never run it (the default testpaths is
``tests``; ``benchmarks/`` collects this file but it skips): environment variables

- ``CERTBENCH_GPU_BENCH_DEVICE``: ``cuda`` (what ``nox -s bench-gpu`` sets), ``cuda:N``, or
  ``cpu`` for a dry run of the whole path with a tiny n; unset: skipped. Skipped when CUDA is
  asked for and absent.
- ``CERTBENCH_GPU_BENCH_MODES``: ``fp32`` (default), ``bf16`` or ``fp32,bf16`` (bf16 =
  ``torch.autocast`` around the base classifier, logits back in fp32).
- ``CERTBENCH_GPU_BENCH_MODELS``: ``gaussian,dds`` (default).
- ``CERTBENCH_GPU_BENCH_N``, ``_N0``, ``_BATCH``, ``_REPEATS``, ``_SIGMA``: the sizes
  (defaults 10,000 / 100 / 1,000 / 3 / 0.25 on CUDA; 6 / 2 / 4 / 1 / 0.25 on the CPU,
  where bf16 autocast is slow: a dry run checks the path, not the speed).
- ``CERTBENCH_GPU_BENCH_OUT``: a path; the rows, settings and environment are (re)written there
  as JSON after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DEVICE = os.environ.get("CERTBENCH_GPU_BENCH_DEVICE", "").strip()
if not DEVICE:
    pytest.skip("GPU throughput benchmark is opt-in: nox -s bench-gpu (or set "
                "CERTBENCH_GPU_BENCH_DEVICE=cuda, or cpu for a dry run)", allow_module_level=True)

import torch  # noqa: E402  (after the opt-in check: a skipped module imports nothing heavy)
from harness_timing import median_seconds  # noqa: E402
from torch import nn  # noqa: E402

from bench.certify.noise import PHASE_ESTIMATE, PHASE_SELECT, NoiseStream  # noqa: E402
from bench.certify.smoothing import Smooth  # noqa: E402
from bench.contract import Cost  # noqa: E402
from bench.data.specs import spec  # noqa: E402
from bench.nets import NormalizeLayer, build_arch  # noqa: E402
from bench.running.devices import environment, resolve_device  # noqa: E402

# Collected and skipped (not a module-level skip, whose "no tests collected" fails the session).
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="no CUDA device")]

ON_CPU = DEVICE == "cpu"
ALPHA, SEED, INDEX = 0.001, 0, 0
SHAPE, NUM_CLASSES = (3, 32, 32), 10


def _setting(name: str, cuda_default, cpu_default, kind=int):
    value = os.environ.get(f"CERTBENCH_GPU_BENCH_{name}")
    return kind(value) if value else (cpu_default if ON_CPU else cuda_default)


N = _setting("N", 10_000, 6)
N0 = _setting("N0", 100, 2)
BATCH = _setting("BATCH", 1_000, 4)
REPEATS = _setting("REPEATS", 3, 1)
SIGMA = _setting("SIGMA", 0.25, 0.25, float)
MODES = [m.strip() for m in os.environ.get("CERTBENCH_GPU_BENCH_MODES", "fp32").split(",")
         if m.strip()]
MODELS = [m.strip() for m in os.environ.get("CERTBENCH_GPU_BENCH_MODELS", "gaussian,dds")
          .split(",") if m.strip()]
OUT = os.environ.get("CERTBENCH_GPU_BENCH_OUT", "").strip()

# google/ddpm-cifar10-32's UNet2DModel configuration (Ho et al.'s CIFAR-10 DDPM, 35.7M params).
DDPM_CIFAR10_UNET = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "act_fn": "silu", "attention_head_dim": None, "center_input_sample": False,
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-6, "norm_num_groups": 32,
    "time_embedding_type": "positional",
}
DDPM_CIFAR10_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                         "beta_schedule": "linear"}


class Autocast(nn.Module):
    """The base classifier under bf16 autocast; logits come back in fp32."""

    def __init__(self, base: nn.Module, device_type: str):
        super().__init__()
        self.base, self.device_type = base, device_type
        self.cost = getattr(base, "cost", Cost())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.base(x)
        return out.float()


def resnet110() -> nn.Module:
    """Cohen et al.'s CIFAR-10 base classifier: normalize layer + ResNet-110, random weights."""
    cifar = spec("cifar10")
    net = build_arch("cifar_resnet110", num_classes=NUM_CLASSES, in_channels=3, image_size=32)
    return nn.Sequential(NormalizeLayer(cifar.mean, cifar.std), net)


def dds(classifier: nn.Module) -> nn.Module:
    """One-shot DDPM denoising (google/ddpm-cifar10-32's architecture, random weights) +
    the classifier: DDS's base classifier as the harness builds it."""
    diffusers = pytest.importorskip("diffusers")
    from bench.diffusion import DenoisedClassifier, Denoiser, DiffusionModel

    unet = diffusers.UNet2DModel(**DDPM_CIFAR10_UNET)
    schedule = diffusers.DDPMScheduler(**DDPM_CIFAR10_SCHEDULE)
    model = DiffusionModel(unet, schedule.alphas_cumprod, description="ddpm-cifar10-32 (random)")
    return DenoisedClassifier(Denoiser(model, sigma=SIGMA), classifier, NUM_CLASSES)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def noisy_batches(x: torch.Tensor) -> list[torch.Tensor]:
    """Exactly the batches certify_record(x, N0, N, ..., seed=SEED, index=INDEX) feeds its
    base classifier, drawn on x's device."""
    batches = []
    for phase, num in ((PHASE_SELECT, N0), (PHASE_ESTIMATE, N)):
        stream = NoiseStream(x.shape, x.device, SEED, INDEX, phase)
        for start in range(0, num, BATCH):
            b = min(BATCH, num - start)
            noise = stream.fill(torch.empty((b, *x.shape), device=x.device))
            batches.append(torch.add(x, noise, alpha=SIGMA))
    return batches


def raw_forward(base: nn.Module, batches: list[torch.Tensor], device: torch.device) -> None:
    with torch.inference_mode():
        for batch in batches:
            base(batch).argmax(1)
    sync(device)


def certify(smooth: Smooth, x: torch.Tensor, device: torch.device, certs: list) -> None:
    certs[:] = [smooth.certify_record(x, N0, N, ALPHA, BATCH, seed=SEED, index=INDEX)]
    sync(device)  # certify_record already syncs once (its counts go to the host)


@pytest.fixture(scope="module")
def device() -> torch.device:
    dev = resolve_device(DEVICE)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both loops see the same few batch shapes
    return dev


@pytest.fixture(scope="module")
def image(device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(SHAPE, generator=gen).to(device)


@pytest.fixture(scope="module")
def networks(device):
    """The fp32 base classifiers, built on first use (one ResNet-110 shared by both)."""
    built: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in built:
            torch.manual_seed(0)
            if "classifier" not in built:
                built["classifier"] = resnet110().to(device).eval()
            if name == "gaussian":
                built[name] = built["classifier"]
            elif name == "dds":
                built[name] = dds(built["classifier"]).to(device).eval()
            else:
                raise ValueError(f"unknown model {name!r}; use gaussian or dds")
        return built[name]

    return get


@pytest.fixture(scope="module")
def report(device):
    """The rows of this module: printed as a table at the end and, with
    CERTBENCH_GPU_BENCH_OUT, written as JSON after every row."""
    rows: list[dict] = []
    settings = {"device": str(device), "n0": N0, "n": N, "batch": BATCH, "repeats": REPEATS,
                "sigma": SIGMA, "alpha": ALPHA, "modes": MODES, "models": MODELS,
                "dry_run": ON_CPU, "weights": "random",
                "timing": "median of interleaved rounds after one warm-up, device synced"}
    if device.type == "cuda":
        settings.update(cudnn_benchmark=torch.backends.cudnn.benchmark,
                        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    env = environment(device)

    def add(row: dict) -> None:
        rows.append(row)
        if OUT:
            path = Path(OUT)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {"benchmark": "gpu_throughput", "settings": settings, "environment": env,
                    "rows": rows}
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    yield add
    if rows:
        print("\n" + table(rows, device))
        if OUT:
            print(f"JSON: {OUT}")


def table(rows: list[dict], device: torch.device) -> str:
    head = ("model", "mode", "batch", "raw samples/s", "certify samples/s", "ratio")
    body = [(r["model"], r["mode"], str(r["batch"]), _rate(r["raw_samples_per_s"]),
             _rate(r["certify_samples_per_s"]), f"{r['ratio']:.3f}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(head)]
    lines = [f"GPU throughput on {device} (n0={N0}, n={N}; ratio = certify / raw)",
             "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(line, widths, strict=True)))
              for line in body]
    return "\n".join(lines)


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_gpu_throughput(model, mode, device, image, networks, report):
    if mode not in ("fp32", "bf16"):
        pytest.fail(f"unknown mode {mode!r}; use fp32 or bf16")
    net = networks(model)
    base = Autocast(net, device.type) if mode == "bf16" else net
    smooth = Smooth(base, NUM_CLASSES, SIGMA)
    batches = noisy_batches(image)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    certs: list = []
    raw, full = median_seconds(REPEATS, (raw_forward, base, batches, device),
                               (certify, smooth, image, device, certs))
    (cert,) = certs
    assert sum(cert.counts_select) == N0 and sum(cert.counts_estimate) == N
    samples = N0 + N
    row = {"model": model, "mode": mode, "batch": BATCH, "samples": samples,
           "raw_seconds": raw, "certify_seconds": full,
           "raw_samples_per_s": samples / raw, "certify_samples_per_s": samples / full,
           "ratio": raw / full, "diffusion_passes_per_sample": smooth.cost.diffusion_passes,
           "parameters": sum(p.numel() for p in net.parameters())}
    describe = getattr(net, "describe", None)
    if callable(describe):
        row["base_classifier"] = describe()
    if device.type == "cuda":
        row["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    report(row)
    print(f"\n{model} {mode}: raw {_rate(row['raw_samples_per_s'])} samples/s, certify "
          f"{_rate(row['certify_samples_per_s'])} samples/s (ratio {row['ratio']:.3f})")
