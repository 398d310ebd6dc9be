"""Consistency regularization (Jeong & Shin, NeurIPS 2020) for randomized smoothing.

Per example, m noisy copies x~ + delta_i with x~ = x (``base: gaussian``) or x~ = the SmoothAdv
point found with the *same* m draws (``base: smoothadv``; PGD of :mod:`methods.attacks`,
epsilon warm-up as in SmoothAdv). Loss: mean CE over the copies + lbd * (1/m) sum KL(p_bar||p_i)
+ eta * H(p_bar) (:func:`methods.soft_smoothing.consistency_loss`).

Units and batching as in :mod:`methods.smoothadv` (epsilon in [0, 1] pixels, the reference's
flags are /256; ``--batch`` counts examples per step, the reference's 256 // m).
Released CIFAR-10 checkpoints are Cohen-format ``{'arch', 'state_dict'}`` files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.protocol import Method, TrainContext
from methods.attacks import smoothadv_pgd
from methods.gaussian import Gaussian, train_noise_augmented
from methods.smoothadv import EpsilonWarmup, reference_recipe
from methods.soft_smoothing import check_param, consistency_loss, logits_on, noisy_copies


class Consistency(Method):
    id = "consistency"
    defaults: Mapping[str, Any] = {"m": 2, "lbd": 10.0, "eta": 0.5, "base": "gaussian",
                                   "epsilon": 0.5, "steps": 10, "warmup": 10}
    base_classifier = Gaussian.base_classifier

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        p = self.params
        m = check_param(self.id, p, "m", int, low=1)
        lbd = check_param(self.id, p, "lbd", float, low=0)
        eta = check_param(self.id, p, "eta", float)
        base = check_param(self.id, p, "base", str, choices=("gaussian", "smoothadv"))
        adversarial = base == "smoothadv"
        schedule = EpsilonWarmup(check_param(self.id, p, "epsilon", float, low=0),
                                 check_param(self.id, p, "warmup", int, low=0))
        steps = check_param(self.id, p, "steps", int, low=1)
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
                                     reference=reference_recipe(m))
