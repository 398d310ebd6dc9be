"""MACER (Zhai et al., ICLR 2020): attack-free training that maximizes the certified radius.

Loss per batch (k noise draws per example): soft smoothed cross-entropy + lbd * hinge
(sigma/2)(gamma - xi) on the radius surrogate xi = Phi^-1(p1) - Phi^-1(p2) of the
beta-tempered smoothed softmax, counted only for examples it classifies correctly
(:func:`bench.training.losses.macer_loss`). ``deferred``: number of initial epochs trained with
lbd = 0 (the re-implementation in jh-jeong/smoothing-consistency defers until the first lr drop;
the MACER paper suggests a lbd = 0 warm start for large sigma).

Released CIFAR-10 checkpoints are ``{'net': state_dict}`` files of a ResNet-110 without an
input normalization layer (registry ``input_layer: none``). Certification is the shared harness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import (
    MACER_RECIPE,
    logits_on,
    macer_loss,
    noisy_copies,
    train_noise_augmented,
)


class Macer(ClassifierMethod):
    id = "macer"
    PARAMS: Mapping[str, Param] = {
        "k": Param(16, int, "noise draws per example (top-2 of their average: at least 2)",
                   low=2),
        "lbd": Param(12.0, float, "weight of the robustness (radius) term", low=0),
        "gamma": Param(8.0, float, "hinge on the radius surrogate", low=0),
        "beta": Param(16.0, float, "softmax inverse temperature of the robustness term", low=0),
        "deferred": Param(0, int, "initial epochs trained with lbd = 0", low=0),
    }

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        k, lbd, deferred = p["k"], p["lbd"], p["deferred"]
        state = {"lbd": lbd if deferred == 0 else 0.0}

        def epoch_hook(epoch: int) -> None:
            state["lbd"] = 0.0 if epoch < deferred else lbd

        def loss(net, xb, yb, gen):
            logits = logits_on(net, xb, noisy_copies(xb, k, ctx.sigma, gen))
            return macer_loss(logits, yb, sigma=ctx.sigma, lbd=state["lbd"], gamma=p["gamma"],
                              beta=p["beta"])

        return train_noise_augmented(ctx, self.id, loss, params=p, epoch_hook=epoch_hook,
                                     reference=MACER_RECIPE)
