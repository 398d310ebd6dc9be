"""Diffusion Denoised Smoothing (Carlini, Tramer, Dvijotham, Rice, Sun, Kolter; ICLR 2023).

The base classifier is ``clf(denoise(x + delta))``: one-shot denoising by an off-the-shelf DDPM at
the timestep matching sigma (bench.diffusion), then an off-the-shelf classifier trained on clean
images. Nothing is trained; certification is the shared harness. One diffusion and one
classifier pass per noisy sample.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.contract import Context, Method
from bench.diffusion import DenoisedClassifier, one_shot_denoiser
from bench.params import Param

# The base classifier lives in the harness (multi-scale smoothing uses it at every scale).
DDSClassifier = DenoisedClassifier


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
