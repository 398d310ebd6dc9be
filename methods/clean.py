"""Standard (noise-free) training: the off-the-shelf classifier DDS puts after its denoiser.

DDS needs a classifier that was never trained on noise, since the denoiser hands it clean-looking
images. This reuses the Gaussian method's training loop with a zero-noise cross-entropy, so the
architecture, optimizer and model card are the same as the noise-trained zoo models. The
``--sigma`` of ``bench train`` plays no part; the card records sigma 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from bench.protocol import BaseClassifier, Context, LogitClassifier, Method, TrainContext
from methods.gaussian import DEFAULT_ARCH, train_noise_augmented


class Clean(Method):
    id = "clean"
    defaults: Mapping[str, Any] = {}

    def base_classifier(self, ctx: Context) -> BaseClassifier:
        """Certifying a clean classifier directly is plain randomized smoothing of it."""
        net = ctx.load_model(ctx.model_for_sigma("classifier", self.id))
        return LogitClassifier(net, ctx.dataset.num_classes)

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        arch = ctx.options.get("arch") or DEFAULT_ARCH.get(ctx.dataset.name, "net")
        family = arch.replace("_", "-").removeprefix(f"{ctx.dataset.name}-")
        name = ctx.name or f"{ctx.dataset.name}-{family}-clean"
        clean_ctx = dataclasses.replace(ctx, sigma=0.0, name=name)
        return train_noise_augmented(clean_ctx, self.id, clean_loss)


def clean_loss(net, xb, yb, gen):
    """Cross-entropy on the images as they are."""
    return F.cross_entropy(net(xb), yb)
