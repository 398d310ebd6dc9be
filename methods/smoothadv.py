"""SmoothAdv (Salman et al., NeurIPS 2019): adversarial training of the smoothed classifier.

Per mini-batch: draw m noises per example, attack the *soft* smoothed classifier with those
draws (SmoothAdv-PGD or -DDN, :mod:`methods.attacks`), then take a cross-entropy step on
x_adv + delta_i with the *same* draws (all m copies with ``multi_noise``, else the first).
The budget ramps up: epsilon_e = min(epsilon, (e + 1) * epsilon / warmup) in epoch e.

Units: ``epsilon`` and DDN's ``init_norm`` are L2 norms in [0, 1] pixel units. The reference
code's ``--epsilon``/``--init-norm-DDN`` flags are in units of 1/256 (not 1/255): its 64, 127,
255, 512 are our 0.25, 0.496, 0.996, 2.0.

Batching: ``--batch`` counts *examples* per optimizer step (each with m noisy copies). The
reference splits each loaded batch of 256 into m steps of 256/m examples; the reference recipe
reproduces that with batch 256 // m. Certification is the shared harness, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from bench.protocol import Method, TrainContext
from methods.attacks import ATTACKS
from methods.gaussian import Gaussian, train_noise_augmented
from methods.soft_smoothing import check_param, logits_on, noisy_copies


class SmoothAdv(Method):
    id = "smoothadv"
    defaults: Mapping[str, Any] = {
        "attack": "pgd", "epsilon": 0.25, "steps": 10, "m": 1, "multi_noise": True,
        "warmup": 10, "init_norm": 1.0, "ddn_gamma": 0.05,
    }
    base_classifier = Gaussian.base_classifier

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        p = self.params
        attack = check_param(self.id, p, "attack", str, choices=tuple(ATTACKS))
        epsilon = check_param(self.id, p, "epsilon", float, low=0)
        steps = check_param(self.id, p, "steps", int, low=1)
        m = check_param(self.id, p, "m", int, low=1)
        multi = check_param(self.id, p, "multi_noise", bool)
        warmup = check_param(self.id, p, "warmup", int, low=0)
        extra = {}
        if attack == "ddn":
            extra = {"init_norm": check_param(self.id, p, "init_norm", float, low=0),
                     "gamma": check_param(self.id, p, "ddn_gamma", float, low=0)}
        schedule = EpsilonWarmup(epsilon, warmup)
        loss = smoothadv_loss(ctx.sigma, m, steps, multi, schedule, ATTACKS[attack], extra)
        return train_noise_augmented(ctx, self.id, loss, params=p, epoch_hook=schedule.set_epoch,
                                     reference=reference_recipe(m))


def reference_recipe(m: int) -> dict[str, Any]:
    """Salman et al.'s README recipe: SGD lr 0.1, StepLR 50, 150 epochs, 256 images per loaded
    batch split into m optimizer steps."""
    return {"epochs": 150, "batch": max(1, 256 // m), "lr": 0.1, "weight_decay": 1e-4,
            "milestones": (50, 100)}


class EpsilonWarmup:
    """epsilon_e = min(epsilon, (e + 1) * epsilon / warmup) for epoch e (0-based); warmup 0 or 1
    means the full budget from the start."""

    def __init__(self, epsilon: float, warmup: int):
        self.epsilon, self.warmup = epsilon, warmup
        self.current = epsilon if warmup <= 1 else epsilon / warmup

    def set_epoch(self, epoch: int) -> None:
        self.current = self.epsilon if self.warmup <= 1 else min(
            self.epsilon, (epoch + 1) * self.epsilon / self.warmup)


def smoothadv_loss(sigma: float, m: int, steps: int, multi_noise: bool, schedule: EpsilonWarmup,
                   attack, attack_kwargs: Mapping[str, Any]):
    """The training loss: attack with m fixed draws, then CE on x_adv + the same draws."""

    def loss(net, xb, yb, gen):
        noise = noisy_copies(xb, m, sigma, gen)
        x_adv = attack(net, xb, yb, noise, epsilon=schedule.current, steps=steps, gen=gen,
                       **attack_kwargs)
        if not multi_noise:
            noise = noise[:, :1]
        logits = logits_on(net, x_adv, noise)
        return F.cross_entropy(logits.flatten(0, 1), yb.repeat_interleave(logits.shape[1]))

    return loss
