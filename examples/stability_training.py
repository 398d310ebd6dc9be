"""Stability training (Li, Chen, Wang & Carin, "Certified Adversarial Robustness with Additive
Noise", NeurIPS 2019): a training method in one file (the CONTRIBUTING.md worked example).

Loss per batch: cross-entropy on the clean images plus ``lbd`` times the cross-entropy of the
prediction on x + delta against the softmax on x (one Gaussian draw per example), so the
network learns to answer the same with and without noise. This follows the re-implementation
used as the "Stability" baseline by Jeong & Shin (NeurIPS 2020, ``train_stab.py`` of
jh-jeong/smoothing-consistency), whose default is lbd = 2.

The file imports ``bench`` only: the harness owns the architecture, the seeded and resumable
loop, the recipes, the model card and the certification. The noise comes from ``gen``, the
loop's seeded noise stream, so the trained weights are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import train_noise_augmented


class StabilityTraining(ClassifierMethod):
    """Certified like any one-network method: the harness smooths the trained classifier."""

    id = "stability-example"
    PARAMS: Mapping[str, Param] = {
        "lbd": Param(2.0, float, "weight of the stability term", low=0),
    }

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        return train_noise_augmented(ctx, self.id, stability_loss(ctx.sigma, self.params["lbd"]),
                                     params=self.params)


def stability_loss(sigma: float, lbd: float):
    """CE(f(x), y) + lbd * CE(softmax f(x) -> f(x + delta)), batch means."""

    def loss(net, xb, yb, gen):
        noise = torch.randn(xb.shape, generator=gen, device=xb.device) * sigma
        clean, noisy = net(xb), net(xb + noise)
        stability = -(clean.softmax(dim=1) * noisy.log_softmax(dim=1)).sum(dim=1).mean()
        return F.cross_entropy(clean, yb) + lbd * stability

    return loss
