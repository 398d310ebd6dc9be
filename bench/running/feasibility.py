"""Honest feasibility: estimate a run's cost from a short timing before it starts.

A run costs (N0 + N) base-classifier calls per image (times the stages of a multi-stage
procedure), and some base classifiers are expensive: a noised diffusion classifier spends
classes x grid UNet passes per call, so the paper's CIFAR-10 setting needs about 1.2e7 UNet
passes per certified image. :func:`estimate` times a few calls of the base classifier on noisy
copies of one image and extrapolates; :func:`warning` turns an estimate above a threshold into
one line for the user. Nothing here touches the run's noise streams: the timing uses its own
generator, and a base classifier with its own randomness is restarted by the harness
(``begin_phase``) before every phase anyway.

    est = estimate(procedure, x, n_images=len(indices), samples=8)
    line = warning(est, threshold_s=3600)
    if line: print(line, file=sys.stderr)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bench.contract import Cost
from bench.data.layout import standard_layout


@dataclass(frozen=True)
class Estimate:
    """Extrapolated cost of a run from ``timed_samples`` timed base-classifier calls."""

    seconds_per_sample: float  # one noisy sample through the base classifier
    samples_per_image: int  # (N0 + N) x stages
    seconds_per_image: float
    images: int
    seconds_total: float
    diffusion_passes_per_image: int
    classifier_passes_per_image: int
    timed_samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line: time per image and in total, with the passes behind it."""
        passes = []
        if self.diffusion_passes_per_image:
            passes.append(f"{self.diffusion_passes_per_image:.3g} diffusion")
        if self.classifier_passes_per_image:
            passes.append(f"{self.classifier_passes_per_image:.3g} classifier")
        what = f" ({' + '.join(passes)} passes per image)" if passes else ""
        return (f"estimated {format_seconds(self.seconds_per_image)} per image and "
                f"{format_seconds(self.seconds_total)} for {self.images} images{what}, "
                f"from {self.timed_samples} timed samples")


def estimate(procedure, x: torch.Tensor, n_images: int, *, samples: int = 8,
             n0: int | None = None, n: int | None = None, sigma: float | None = None,
             warmup: bool = True, min_seconds: float = 0.0,
             max_samples: int = 1024) -> Estimate:
    """Time ``samples`` noisy copies of ``x`` (one image (C, H, W) in [0, 1]) through the base
    classifier and extrapolate to ``n_images`` images. With ``min_seconds``, a call faster
    than that is repeated with 4x the samples (up to ``max_samples``): a cheap classifier's
    per-call overhead would otherwise dominate a small batch and inflate the estimate.

    ``procedure`` is a certification procedure (its ``base``, ``budget`` (n0, n, stages) and
    ``spec.sigma`` are used) or a bare base classifier, in which case ``n0`` and ``n`` are
    required. With ``warmup`` each batch is run once untimed first.
    """
    base = getattr(procedure, "base", procedure)
    budget = getattr(procedure, "budget", None)
    if budget is not None:
        n0 = budget.n0 if n0 is None else n0
        n = budget.n if n is None else n
        stages = int(getattr(budget, "stages", 1) or 1)
    else:
        stages = 1
    if n0 is None or n is None:
        raise ValueError("estimate() needs n0 and n for a bare base classifier")
    if sigma is None:
        spec = getattr(procedure, "spec", None)
        sigma = float(getattr(spec, "sigma", 0.0) or 0.0)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    cost: Cost = getattr(base, "cost", None) or getattr(procedure, "cost", None) or Cost()
    x = x[0] if x.dim() == 4 else x
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        while True:
            noise = torch.randn((samples, *x.shape), generator=gen).to(x.device, x.dtype)
            batch = standard_layout(x.unsqueeze(0) + sigma * noise)  # plain NCHW, as Smooth's
            if warmup:  # the first call at a batch shape pays one-off setup (kernels, caches)
                base(batch)
                _sync(x.device)
            start = time.perf_counter()
            base(batch)
            _sync(x.device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds or samples >= max_samples:
                break
            samples = min(4 * samples, max_samples)
    per_sample = elapsed / samples
    per_image_samples = (int(n0) + int(n)) * stages
    per_image = per_sample * per_image_samples
    return Estimate(
        seconds_per_sample=per_sample, samples_per_image=per_image_samples,
        seconds_per_image=per_image, images=int(n_images),
        seconds_total=per_image * int(n_images),
        diffusion_passes_per_image=per_image_samples * cost.diffusion_passes,
        classifier_passes_per_image=per_image_samples * cost.classifier_passes,
        timed_samples=samples)


def warning(est: Estimate, threshold_s: float, *, per_image_threshold_s: float | None = None
            ) -> str | None:
    """A one-line warning when the estimated total (or, if given, per-image) time exceeds the
    threshold; None otherwise."""
    over_total = est.seconds_total > threshold_s
    over_image = per_image_threshold_s is not None and est.seconds_per_image > per_image_threshold_s
    if not (over_total or over_image):
        return None
    return (f"warning: {est.line()}; this exceeds "
            + (f"{format_seconds(threshold_s)} in total" if over_total
               else f"{format_seconds(per_image_threshold_s)} per image")
            + " (reduce --n, --max-images or the method's cost, or run it on an accelerator)")


def format_seconds(seconds: float) -> str:
    """1.5s, 12min, 3.2h, 4.1d."""
    if not math.isfinite(seconds):
        return "inf"
    if seconds < 60:
        return f"{seconds:.2g}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
