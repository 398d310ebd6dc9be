"""MACER (Zhai et al., ICLR 2020): attack-free training that maximizes the certified radius.

Loss per batch (k noise draws per example): soft smoothed cross-entropy + lbd * hinge
(sigma/2)(gamma - xi) on the radius surrogate xi = Phi^-1(p1) - Phi^-1(p2) of the
beta-tempered smoothed softmax, counted only for examples it classifies correctly
(:func:`methods.soft_smoothing.macer_loss`). ``deferred``: number of initial epochs trained with
lbd = 0 (the re-implementation in jh-jeong/smoothing-consistency defers until the first lr drop;
the MACER paper suggests a lbd = 0 warm start for large sigma).

Released CIFAR-10 checkpoints are ``{'net': state_dict}`` files of a ResNet-110 without an
input normalization layer (registry ``input_layer: none``). Certification is the shared harness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.protocol import Method, TrainContext
from methods.gaussian import Gaussian, train_noise_augmented
from methods.soft_smoothing import check_param, logits_on, macer_loss, noisy_copies

# MACER's main.py: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 64, 440 epochs, x0.1 at 200, 400.
REFERENCE_RECIPE = {"epochs": 440, "batch": 64, "lr": 0.01, "weight_decay": 5e-4,
                    "milestones": (200, 400)}


class Macer(Method):
    id = "macer"
    defaults: Mapping[str, Any] = {"k": 16, "lbd": 12.0, "gamma": 8.0, "beta": 16.0,
                                   "deferred": 0}
    base_classifier = Gaussian.base_classifier

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        p = self.params
        k = check_param(self.id, p, "k", int, low=2)  # top-2 of a k-sample average
        lbd = check_param(self.id, p, "lbd", float, low=0)
        gamma = check_param(self.id, p, "gamma", float, low=0)
        beta = check_param(self.id, p, "beta", float, low=0)
        deferred = check_param(self.id, p, "deferred", int, low=0)
        state = {"lbd": lbd if deferred == 0 else 0.0}

        def epoch_hook(epoch: int) -> None:
            state["lbd"] = 0.0 if epoch < deferred else lbd

        def loss(net, xb, yb, gen):
            logits = logits_on(net, xb, noisy_copies(xb, k, ctx.sigma, gen))
            return macer_loss(logits, yb, sigma=ctx.sigma, lbd=state["lbd"], gamma=gamma,
                              beta=beta)

        return train_noise_augmented(ctx, self.id, loss, params=p, epoch_hook=epoch_hook,
                                     reference=REFERENCE_RECIPE)
