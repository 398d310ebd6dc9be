"""A softmax ensemble of two noise-trained classifiers (the CONTRIBUTING.md worked example).

Ensembling base models lowers the variance of the smoothed classifier's vote and so raises
p_A and the certified radius (Horvath et al., "Boosting Randomized Smoothing with Variance
Reduced Classifiers", ICLR 2022). Here: the mean of the softmax outputs of the registry's
``classifier`` and ``partner`` models for the run's sigma. Each noisy sample costs two
classifier forward passes, which the harness records and the leaderboard shows.

An adapter only builds the base classifier: the harness adds the noise, samples, computes
the Clopper-Pearson bound and stores the certificates.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bench.contract import Context, Cost, Method, labels_from_logits
from bench.params import Param


class SoftmaxEnsemble(Method):
    id = "ensemble-example"
    # Every param the entry may set, typed once (registry params or --param weight=0.7).
    PARAMS: Mapping[str, Param] = {
        "weight": Param(0.5, float, low=0.0, high=1.0, doc="weight of the first model"),
    }

    def base_classifier(self, ctx: Context):
        # Roles named in the registry entry; their sha256s land in the run's card.
        first = ctx.model("classifier")
        second = ctx.model("partner")
        return EnsembleClassifier(first, second, float(self.params["weight"]),
                                  ctx.dataset.num_classes)


class EnsembleClassifier:
    """Labels from w * softmax(f1(x)) + (1 - w) * softmax(f2(x))."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module, weight: float,
                 num_classes: int):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.first, self.second = first.eval(), second.eval()
        self.weight = weight
        self.num_classes = num_classes
        self.cost = Cost(m=1, classifier_passes=2)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs = (self.weight * torch.softmax(self.first(x), dim=1)
                 + (1 - self.weight) * torch.softmax(self.second(x), dim=1))
        return labels_from_logits(probs, self.num_classes)
