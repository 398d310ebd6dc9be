"""Standard (noise-free) training: the off-the-shelf classifier DDS puts after its denoiser.

DDS needs a classifier that was never trained on noise, since the denoiser hands it clean-looking
images. Training is the harness's :func:`bench.training.train_noise_augmented` with a zero-noise
cross-entropy, so the architecture, optimizer and model card are the same as the noise-trained
zoo models. The ``--sigma`` of ``bench train`` plays no part; the card records sigma 0.
Certifying a clean classifier directly is plain randomized smoothing of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import train_noise_augmented


class Clean(ClassifierMethod):
    id = "clean"
    PARAMS: Mapping[str, Param] = {}

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        name = ctx.model_name(self.id, ctx.arch(), with_sigma=False)
        return train_noise_augmented(dataclasses.replace(ctx, sigma=0.0, name=name), self.id,
                                     clean_loss)


def clean_loss(net, xb, yb, gen):
    """Cross-entropy on the images as they are."""
    return F.cross_entropy(net(xb), yb)
