"""Multi-scale diffusion denoised smoothing (Jeong & Shin, NeurIPS 2023).

The base classifier at each noise scale is DDS's denoise-then-classify (one-shot denoising by one
diffusion model at the timestep matching that sigma, then a classifier trained on clean images); the
harness's cascade procedure (:mod:`bench.certify.procedures.cascade`) certifies with them, largest
scale first. ``python -m bench train --method multiscale`` fine-tunes the diffusion model with the
classifier frozen (:mod:`bench.training.calibration`): consistent denoising where the image is
recoverable at a scale, diverse where it is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.certify.procedures.cascade import CASCADE_PARAMS
from bench.contract import Context, Method, TrainContext
from bench.diffusion import DenoisedClassifier, one_shot_denoiser
from bench.params import Param


class MultiScale(Method):
    id = "multiscale"
    PROCEDURE = "cascade"
    PARAMS: Mapping[str, Param] = {
        **CASCADE_PARAMS,
        "denoiser": Param(None, str, optional=True,
                          doc="a registered model, diffusers folder, Hub id or module:Class "
                              "(default: the registry's denoiser for the dataset)"),
    }

    def base_classifier(self, ctx: Context):
        """DDS at ``ctx.sigma``: the cascade asks for one per scale (one diffusion model)."""
        denoiser = one_shot_denoiser(ctx, self.params["denoiser"])
        return DenoisedClassifier(denoiser, ctx.model("classifier"),
                                  ctx.dataset.num_classes).eval()

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        from bench.training.calibration import finetune_denoiser

        # The base DDPM: --param denoiser=NAME, else the dataset's unconditional zoo DDPM (the
        # registry's multiscale denoiser is the fine-tuned result itself); the frozen classifier
        # is the dataset's clean zoo classifier (digits-ddpm / digits-cnn-clean on digits).
        data = ctx.dataset.name
        return finetune_denoiser(ctx, base=self.params["denoiser"] or f"{data}-ddpm",
                                 classifier=f"{data}-cnn-clean",
                                 scales=tuple(self.params["scales"]))
