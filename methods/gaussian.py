"""Gaussian noise augmentation (Cohen, Rosenfeld & Kolter, ICML 2019).

The base classifier is a network trained with cross-entropy on x + N(0, sigma^2 I), one fresh
draw per example per step, noise added before the normalization layer (which sits inside the
network). Certification is the shared harness, unchanged; training is
:func:`bench.training.train_noise_augmented` with this loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import train_noise_augmented


class Gaussian(ClassifierMethod):
    id = "gaussian"
    PARAMS: Mapping[str, Param] = {}

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        return train_noise_augmented(ctx, self.id, gaussian_loss(ctx.sigma))


def gaussian_loss(sigma: float):
    """Cross-entropy on one fresh Gaussian draw per example."""

    def loss(net, xb, yb, gen):
        noise = torch.randn(xb.shape, generator=gen, device=xb.device) * sigma
        return F.cross_entropy(net(xb + noise), yb)

    return loss
