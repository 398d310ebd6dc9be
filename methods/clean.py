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

from bench.protocol import Method, TrainContext
from methods.gaussian import DEFAULT_ARCH, Gaussian, train_noise_augmented


class Clean(Method):
    id = "clean"
    defaults: Mapping[str, Any] = {}

    # Certifying a clean classifier directly is plain randomized smoothing of it.
    base_classifier = Gaussian.base_classifier

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        arch = ctx.options.get("arch") or DEFAULT_ARCH.get(ctx.dataset.name, "net")
        name = ctx.model_name(self.id, arch, with_sigma=False)
        return train_noise_augmented(dataclasses.replace(ctx, sigma=0.0, name=name), self.id,
                                     clean_loss)


def clean_loss(net, xb, yb, gen):
    """Cross-entropy on the images as they are."""
    return F.cross_entropy(net(xb), yb)
