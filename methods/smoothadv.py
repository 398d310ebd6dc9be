"""SmoothAdv (Salman et al., NeurIPS 2019): adversarial training of the smoothed classifier.

Per mini-batch: draw m noises per example, attack the *soft* smoothed classifier with those
draws (SmoothAdv-PGD or -DDN, :mod:`bench.training.attacks`), then take a cross-entropy step on
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

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import (
    ATTACKS,
    EpsilonWarmup,
    logits_on,
    noisy_copies,
    smoothadv_recipe,
    train_noise_augmented,
)


class SmoothAdv(ClassifierMethod):
    id = "smoothadv"
    PARAMS: Mapping[str, Param] = {
        "attack": Param("pgd", str, "attack on the soft smoothed classifier",
                        choices=tuple(ATTACKS)),
        "epsilon": Param(0.25, float, "L2 attack budget, [0, 1] pixels (reference flag / 256)",
                         low=0),
        "steps": Param(10, int, "attack steps", low=1),
        "m": Param(1, int, "noise draws per example (attack and training step)", low=1),
        "multi_noise": Param(True, bool, "train on all m noisy copies (else the first)"),
        "warmup": Param(10, int, "epochs over which epsilon ramps up linearly", low=0),
        "init_norm": Param(1.0, float, "DDN: initial perturbation norm, [0, 1] pixels", low=0),
        "ddn_gamma": Param(0.05, float, "DDN: per-step norm change factor", low=0),
    }

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        extra = {}
        if p["attack"] == "ddn":
            extra = {"init_norm": p["init_norm"], "gamma": p["ddn_gamma"]}
        schedule = EpsilonWarmup(p["epsilon"], p["warmup"])
        loss = smoothadv_loss(ctx.sigma, p["m"], p["steps"], p["multi_noise"], schedule,
                              ATTACKS[p["attack"]], extra)
        return train_noise_augmented(ctx, self.id, loss, params=p, epoch_hook=schedule.set_epoch,
                                     reference=smoothadv_recipe(p["m"]))


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
