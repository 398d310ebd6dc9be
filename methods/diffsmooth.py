"""DiffSmooth (Zhang, Chen, Zhang, Xiao, Li; USENIX Security 2023).

Base classifier: denoise x + delta once (bench.diffusion), then average the softmax of a
smoothed-trained classifier over m local Gaussian draws with std sigma' (``local_sigma``) and
hand argmax of the average to the outer count: one vote per outer sample, never m. The certified
radius uses the outer sigma only. By default the m local draws are drawn once from a fixed seed
and reused for every outer sample and image (the paper's fix_local_noise), so f is deterministic
and independent of batch splits; ``local_noise: fresh`` draws new ones per outer sample from a
stream seeded per image and phase (selection, estimation), so the estimation draws do not depend
on N0. Cost per outer sample: 1 diffusion pass, m classifier passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bench.certify.noise import PHASE_SELECT, NoiseStream
from bench.contract import Context, Cost, Method
from bench.diffusion import Denoiser, one_shot_denoiser
from bench.params import Param

LOCAL_NOISE = ("fixed", "fresh")
# The fresh local-noise stream of harness phase p of an image is stream phase PHASE_LOCAL + p
# (7, 8, 9 for select, estimate, predict): distinct from the harness's phases 0..2.
PHASE_LOCAL = 7


class DiffSmoothClassifier(nn.Module):
    """Noisy images -> mean softmax over m local draws around their denoising, (B, K)."""

    def __init__(self, denoiser: Denoiser, classifier: nn.Module, num_classes: int, *,
                 shape: tuple[int, int, int], m: int, local_sigma: float,
                 local_noise: str = "fixed", local_seed: int = 42):
        super().__init__()
        self.denoiser, self.classifier = denoiser, classifier
        self.num_classes, self.shape = num_classes, tuple(shape)
        self.m, self.local_sigma = int(m), float(local_sigma)
        self.local_noise, self.local_seed = local_noise, int(local_seed)
        self.cost = Cost(m=self.m, classifier_passes=self.m, diffusion_passes=1)
        gen = torch.Generator().manual_seed(self.local_seed)
        # The fixed draws: (m, C, H, W), the same for every outer sample of every image.
        self.register_buffer("fixed_noise", torch.randn((self.m, *self.shape), generator=gen))
        self.stream: NoiseStream | None = None
        self.pairing: dict[str, Any] = {}
        self.begin_phase(0, 0, PHASE_SELECT)

    def begin_phase(self, seed: int, index: int, phase: int) -> None:
        """Restart the fresh local-noise stream for one phase of one image (Smooth calls it
        before each phase's samples). The fixed draws have no stream: nothing changes."""
        if self.local_noise == "fresh":
            self.stream = NoiseStream((self.m, *self.shape), self.fixed_noise.device,
                                      self.local_seed + seed, index, PHASE_LOCAL + phase)

    def noise_streams(self, phases) -> list[dict[str, Any]]:
        """The local draws' streams during the harness's ``phases`` (for the run's card): one
        fixed set from ``local_seed``, or a fresh stream per image and phase."""
        shape = ", ".join(map(str, (self.m, *self.shape)))
        if self.local_noise == "fixed":
            return [{"phase": None, "seed": f"torch.Generator().manual_seed({self.local_seed})",
                     "draws": f"DiffSmooth local noise, ({shape}) drawn once, reused for every "
                              "sample of every image"}]
        return [{"phase": PHASE_LOCAL + int(p),
                 "seed": f"SeedSequence([run seed + local_seed {self.local_seed}, image index, "
                         "phase])",
                 "draws": f"DiffSmooth local noise, ({shape}) per outer sample of harness "
                          f"phase {p}"} for p in phases]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        clean = self.denoiser(x)  # (B, C, H, W) in [0, 1]
        if self.local_noise == "fixed":
            noise = self.fixed_noise.to(x.device, x.dtype).unsqueeze(0)
        else:
            noise = self.stream.fill(torch.empty((b, self.m, *self.shape), dtype=x.dtype,
                                                 device=x.device))
        # No clipping of x_hat + eps' (as in the paper's code).
        batch = torch.add(clean.unsqueeze(1), noise, alpha=self.local_sigma)
        logits = self.classifier(batch.reshape(b * self.m, *self.shape))
        probs = torch.softmax(logits.float(), dim=1).view(b, self.m, -1)
        return probs.mean(dim=1)  # one row per outer sample: its single vote is the argmax

    def describe(self) -> dict[str, Any]:
        return {"denoiser": self.denoiser.describe(), "m": self.m,
                "local_sigma": self.local_sigma,
                "local_noise": (f"fixed (seed {self.local_seed})" if self.local_noise == "fixed"
                                else "fresh (per image and phase stream)"),
                "pairing": self.pairing}


class DiffSmooth(Method):
    id = "diffsmooth"
    PARAMS: Mapping[str, Param] = {
        "m": Param(5, int, low=1, sets_m=True,
                   doc="local draws per outer sample (predictions per sample)"),
        "local_sigma": Param(0.25, float, sigma=True, doc="sigma' of the local draws"),
        "local_noise": Param("fixed", str, choices=LOCAL_NOISE,
                             doc="fixed: one set of m draws for all (the paper); fresh: per "
                                 "outer sample, from a stream seeded per image and phase"),
        "local_seed": Param(42, int, low=0, doc="seed of the local draws"),
        "denoiser": Param(None, str, optional=True,
                          doc="a registered model, diffusers folder, Hub id or module:Class "
                              "(default: the registry's denoiser for the dataset)"),
    }

    def base_classifier(self, ctx: Context) -> DiffSmoothClassifier:
        p = self.params
        denoiser = one_shot_denoiser(ctx, p["denoiser"])
        classifier = ctx.model("classifier")
        base = DiffSmoothClassifier(
            denoiser, classifier, ctx.dataset.num_classes, shape=ctx.dataset.shape, m=p["m"],
            local_sigma=float(p["local_sigma"]), local_noise=p["local_noise"],
            local_seed=p["local_seed"]).to(ctx.device).eval()
        ref = ctx.model_ref("classifier")
        base.pairing = {"outer_sigma": ctx.sigma, "local_sigma": float(p["local_sigma"]),
                        "classifier": ref.name, "classifier_trained_sigma": ref.fields.get("sigma")}
        return base
