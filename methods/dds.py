"""Diffusion Denoised Smoothing (Carlini, Tramer, Dvijotham, Rice, Sun, Kolter; ICLR 2023).

The base classifier is ``clf(denoise(x + delta))``: one-shot denoising by an off-the-shelf DDPM at
the timestep matching sigma (bench.diffusion), then an off-the-shelf classifier trained on clean
images. Nothing is trained; certification is the shared harness. One diffusion and one
classifier pass per noisy sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bench.diffusion import Denoiser, one_shot_denoiser
from bench.params import Param
from bench.protocol import Context, Cost, Method


class DDSClassifier(nn.Module):
    """Noisy images in [0, 1] -> logits of the classifier on their one-shot denoising."""

    def __init__(self, denoiser: Denoiser, classifier: nn.Module, num_classes: int):
        super().__init__()
        self.denoiser, self.classifier = denoiser, classifier
        self.num_classes = num_classes
        self.cost = Cost(m=1, classifier_passes=1, diffusion_passes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))

    def describe(self) -> dict[str, Any]:
        return {"denoiser": self.denoiser.describe()}


class DDS(Method):
    id = "dds"
    PARAMS: Mapping[str, Param] = {
        "denoiser": Param(None, str, optional=True,
                          doc="a registered model, diffusers folder, Hub id or module:Class "
                              "(default: the registry's denoiser for the dataset)"),
    }

    def base_classifier(self, ctx: Context) -> DDSClassifier:
        denoiser = one_shot_denoiser(ctx, self.params["denoiser"])
        classifier = ctx.model("classifier")
        return DDSClassifier(denoiser, classifier, ctx.dataset.num_classes).eval()
