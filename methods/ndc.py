"""Noised diffusion classifiers (Chen, Dong, Shao, Hao, Yang, Su, Zhu; NeurIPS 2024).

The base classifier is a class-conditional diffusion model itself: each class is scored by a
weighted denoising loss (an ELBO) on the *noisy* input, and Cohen's certification runs on top.
``variant: ep`` (EPNDC) uses the exact Gaussian posterior of the diffusion chain continued from
the noisy input; ``variant: ap`` (APNDC) one-shot denoises with the unconditional model first
and runs the plain diffusion classifier on the estimate. The math, the VP (DDPM) <-> VE (EDM)
mapping, the weights and every departure from the paper: :mod:`bench.ndc`.

Model roles: ``conditional`` (a class-conditional diffusers UNet2DModel, called with
``class_labels``) and, for APNDC, ``denoiser`` (the unconditional DDPM of DDS). Cost per noisy
sample: classes x grid UNet passes (+1 for APNDC's denoising), no classifier pass.
``bench train --method ndc`` trains the conditional model (:mod:`bench.training.conditional_ddpm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.contract import Context, Method, TrainContext
from bench.diffusion import DiffusionModel, one_shot_denoiser
from bench.errors import ConfigError
from bench.ndc import PAPER_MAX_NOISE, VARIANTS, WEIGHTS, NoisedDiffusionClassifier
from bench.params import Param
from bench.training.conditional_ddpm import train_conditional_ddpm


class NDC(Method):
    id = "ndc"
    PARAMS: Mapping[str, Param] = {
        "variant": Param("ep", str, choices=VARIANTS,
                         doc="ep: exact-posterior NDC; ap: one-shot denoise, then the plain "
                             "diffusion classifier"),
        "grid": Param(20, int, low=1, high=1000,
                      doc="noise levels scored per class (UNet passes per class per sample; "
                          "the paper uses 126 on CIFAR-10)"),
        "skip": Param(1, int, low=0, high=1000,
                      doc="grid levels just above 2*sigma left out (the paper skips 5 of 126); "
                          "EPNDC with the paper's weights needs >= 1"),
        "max_noise": Param(PAPER_MAX_NOISE, float, low=0.0,
                           doc="top of the grid, EDM sigma of the [-1, 1] range (paper: 3)"),
        "weights": Param("paper", str, choices=WEIGHTS,
                         doc="paper: EDM lambda * log-normal density * dsigma (EPNDC: times "
                             "the paper's posterior factor); elbo: the exact ELBO weights of "
                             "the discrete chain"),
        "noise_seed": Param(0, int, low=0,
                            doc="seed of the classifier's own noise (added to the run seed)"),
        "sift_keep": Param(10, int, low=1,
                           doc="with more classes than this, sift-and-refine: survivors "
                               "scored on the full grid"),
        "sift_grid": Param(5, int, low=1, doc="levels of the sift stage"),
        "sift_margin": Param(0.05, float, low=0.0,
                             doc="drop a class when its weighted mean loss exceeds the best "
                                 "by more than this during the sift"),
        "max_rows": Param(1024, int, low=1,
                          doc="rows (sample x class x level) per UNet call; memory only"),
        "denoiser": Param(None, str, optional=True,
                          doc="APNDC's unconditional denoiser: a registered model, diffusers "
                              "folder, Hub id or module:Class (default: the registry's)"),
        "conditional": Param(None, str, optional=True,
                             doc="the class-conditional model (default: the registry's)"),
    }

    def base_classifier(self, ctx: Context) -> NoisedDiffusionClassifier:
        p = self.params
        model = ctx.model("conditional", override=p["conditional"])
        if not isinstance(model, DiffusionModel):
            name = ctx.model_ref("conditional").name
            raise ConfigError(f"model {name!r} is not a diffusion model (use source diffusers "
                              "or python)")
        denoiser = one_shot_denoiser(ctx, p["denoiser"]) if p["variant"] == "ap" else None
        return NoisedDiffusionClassifier(
            model, ctx.dataset.num_classes, shape=ctx.dataset.shape, sigma=ctx.sigma,
            variant=p["variant"], grid=p["grid"], skip=p["skip"], max_noise=p["max_noise"],
            weights=p["weights"], denoiser=denoiser, noise_seed=p["noise_seed"],
            sift_keep=p["sift_keep"], sift_grid=p["sift_grid"], sift_margin=p["sift_margin"],
            max_rows=p["max_rows"]).to(ctx.device).eval()

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        return train_conditional_ddpm(ctx)
