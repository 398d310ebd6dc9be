"""Training for training-based methods: what an adapter's ``train(ctx)`` is built from.

A method adapter (``methods/<id>.py`` or any module of yours) only states its loss and params;
everything else a noise-trained classifier needs lives here, shared, so that a new training
method is one file importing ``bench`` and nothing else:

- :mod:`bench.training.classifier`  ``train_noise_augmented``: build, train, evaluate, save + card
- :mod:`bench.training.loop`        the seeded, resumable SGD loop (``train_classifier``)
- :mod:`bench.training.recipes`     project recipe vs the papers' published recipes
- :mod:`bench.training.losses`      losses on the soft smoothed classifier (MACER, consistency)
- :mod:`bench.training.attacks`     SmoothAdv's PGD/DDN attacks and the epsilon warm-up
- :mod:`bench.training.ddpm`        the small DDPM denoiser trainer (``--method ddpm``)
"""

from bench.training.attacks import ATTACKS, EpsilonWarmup, smoothadv_ddn, smoothadv_pgd
from bench.training.classifier import EVAL_DRAWS, train_noise_augmented
from bench.training.loop import LossFn, TrainSettings, noisy_accuracy, train_classifier
from bench.training.losses import (
    consistency_loss,
    logits_on,
    macer_loss,
    noisy_copies,
    soft_smoothed_nll,
    std_normal_icdf,
)
from bench.training.recipes import (
    MACER_RECIPE,
    REFERENCE_RECIPE,
    smoothadv_recipe,
)

__all__ = [
    "ATTACKS",
    "EVAL_DRAWS",
    "MACER_RECIPE",
    "REFERENCE_RECIPE",
    "EpsilonWarmup",
    "LossFn",
    "TrainSettings",
    "consistency_loss",
    "logits_on",
    "macer_loss",
    "noisy_accuracy",
    "noisy_copies",
    "smoothadv_ddn",
    "smoothadv_pgd",
    "smoothadv_recipe",
    "soft_smoothed_nll",
    "std_normal_icdf",
    "train_classifier",
    "train_noise_augmented",
]
