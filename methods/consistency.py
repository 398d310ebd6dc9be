"""Consistency regularization (Jeong & Shin, NeurIPS 2020) for randomized smoothing.

Per example, m noisy copies x~ + delta_i with x~ = x (``base: gaussian``) or x~ = the SmoothAdv
point found with the *same* m draws (``base: smoothadv``; PGD of :mod:`bench.training.attacks`,
epsilon warm-up as in SmoothAdv). Loss: mean CE over the copies + lbd * (1/m) sum KL(p_bar||p_i)
+ eta * H(p_bar) (:func:`bench.training.losses.consistency_loss`).

Units and batching as in :mod:`methods.smoothadv` (epsilon in [0, 1] pixels, the reference's
flags are /256; ``--batch`` counts examples per step, the reference's 256 // m).
Released CIFAR-10 checkpoints are Cohen-format ``{'arch', 'state_dict'}`` files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.contract import ClassifierMethod, TrainContext
from bench.params import Param
from bench.training import (
    EpsilonWarmup,
    consistency_loss,
    logits_on,
    noisy_copies,
    smoothadv_pgd,
    smoothadv_recipe,
    train_noise_augmented,
)


class Consistency(ClassifierMethod):
    id = "consistency"
    PARAMS: Mapping[str, Param] = {
        "m": Param(2, int, "noisy copies per example", low=1),
        "lbd": Param(10.0, float, "weight of the consistency (KL) term", low=0),
        "eta": Param(0.5, float, "weight of the entropy term"),
        "base": Param("gaussian", str, "copies around x, or around SmoothAdv's PGD point",
                      choices=("gaussian", "smoothadv")),
        "epsilon": Param(0.5, float, "base smoothadv: L2 attack budget, [0, 1] pixels", low=0),
        "steps": Param(10, int, "base smoothadv: PGD steps", low=1),
        "warmup": Param(10, int, "base smoothadv: epochs of linear epsilon ramp-up", low=0),
    }

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        m, lbd, eta, steps = p["m"], p["lbd"], p["eta"], p["steps"]
        adversarial = p["base"] == "smoothadv"
        schedule = EpsilonWarmup(p["epsilon"], p["warmup"])
        # Record only the params that shaped this model (the attack's are unused on gaussian).
        used = dict(p) if adversarial else {k: p[k] for k in ("m", "lbd", "eta", "base")}

        def loss(net, xb, yb, gen):
            noise = noisy_copies(xb, m, ctx.sigma, gen)
            if adversarial:
                xb = smoothadv_pgd(net, xb, yb, noise, epsilon=schedule.current, steps=steps,
                                   gen=gen)
            return consistency_loss(logits_on(net, xb, noise), yb, lbd=lbd, eta=eta)

        return train_noise_augmented(ctx, self.id, loss, params=used,
                                     epoch_hook=schedule.set_epoch if adversarial else None,
                                     reference=smoothadv_recipe(m))
