"""Gaussian noise augmentation (Cohen, Rosenfeld & Kolter, ICML 2019).

The base classifier is a network trained with cross-entropy on x + N(0, sigma^2 I), one fresh
draw per example per step, noise added before the normalization layer (which sits inside the
network). Certification is the shared harness, unchanged.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.nets import NormalizeLayer, build_arch, save_zoo_model
from bench.nets.training import TrainSettings, noisy_accuracy, train_classifier
from bench.protocol import BaseClassifier, Context, LogitClassifier, Method, TrainContext

# The project's own architecture per dataset when training from scratch.
DEFAULT_ARCH = {"digits": "digits_cnn", "mnist": "mnist_cnn", "fashion-mnist": "mnist_cnn",
                "cifar10": "cifar_resnet110"}
EVAL_DRAWS = 10  # noise draws per test image for the model card's noisy accuracy


class Gaussian(Method):
    id = "gaussian"
    defaults: Mapping[str, Any] = {}

    def base_classifier(self, ctx: Context) -> BaseClassifier:
        net = ctx.load_model(ctx.model_for_sigma("classifier", self.id))
        return LogitClassifier(net, ctx.dataset.num_classes)

    def train(self, ctx: TrainContext, options: Mapping[str, Any]) -> dict[str, Any]:
        return train_noise_augmented(ctx, self.id, gaussian_loss(ctx.sigma))


def gaussian_loss(sigma: float):
    """Cross-entropy on one fresh Gaussian draw per example."""

    def loss(net, xb, yb, gen):
        noise = torch.randn(xb.shape, generator=gen, device=xb.device) * sigma
        return F.cross_entropy(net(xb + noise), yb)

    return loss


# The references' recipes (algorithms.md 1.5), used with --recipe reference (the default on
# cifar10): SGD lr 0.1, StepLR x0.1 every 30 epochs, 90 epochs, batch 256, crop+flip on CIFAR.
REFERENCE_RECIPE = {"epochs": 90, "batch": 256, "lr": 0.1, "weight_decay": 1e-4,
                    "milestones": (30, 60)}
RECIPES = ("auto", "project", "reference")
CROP_FLIP_DATASETS = ("cifar10",)


def train_noise_augmented(ctx: TrainContext, method: str, loss_fn, *,
                          params: Mapping[str, Any] | None = None, epoch_hook=None,
                          reference: Mapping[str, Any] = REFERENCE_RECIPE) -> dict[str, Any]:
    """Build the dataset's architecture, train it with ``loss_fn``, save weights + card.

    ``params`` (the method's hyper-parameters) go into the card and into the checkpoint's
    fingerprint; ``epoch_hook(e)`` runs before each epoch (warm-ups); ``reference`` is the
    method's published recipe, used with --recipe reference.
    """
    info = ctx.dataset
    arch = ctx.options.get("arch") or DEFAULT_ARCH.get(info.name)
    if arch is None:
        raise ConfigError(f"no default architecture to train on {info.name}; pass --arch NAME")
    recipe = _recipe_name(ctx)
    settings = _settings(ctx, recipe, reference)
    c, h, _ = info.shape
    torch.manual_seed(ctx.seed)  # weight initialisation follows the run seed
    net = torch.nn.Sequential(NormalizeLayer(info.mean, info.std),
                              build_arch(arch, num_classes=info.num_classes, in_channels=c,
                                         image_size=h))
    name = ctx.model_name(method, arch)
    out = Path(ctx.out_dir) / f"{name}.safetensors"
    checkpoint = out.with_suffix(".ckpt")
    fingerprint = {"method": method, "params": dict(params or {}), "arch": arch,
                   "dataset": info.name, "sigma": ctx.sigma}
    history = train_classifier(net, *ctx.train, loss_fn, settings, device=ctx.device,
                               progress=ctx.progress, desc=f"{method} sigma={ctx.sigma:g}",
                               epoch_hook=epoch_hook, checkpoint=checkpoint,
                               fingerprint=fingerprint)
    x_test, y_test = ctx.test
    clean = noisy_accuracy(net, x_test, y_test, 0.0, device=ctx.device)
    noisy = noisy_accuracy(net, x_test, y_test, ctx.sigma, draws=EVAL_DRAWS, seed=ctx.seed,
                           device=ctx.device)
    card = {
        "name": name, "method": method, "arch": arch, "dataset": info.name,
        "sigma": ctx.sigma, "epochs": settings.epochs, "batch": settings.batch,
        "lr": settings.lr, "optimizer": _describe(settings),
        "seed": ctx.seed, "train_images": len(ctx.train[0]), "test_images": len(x_test),
        "clean_accuracy": round(clean, 4),
        "noisy_accuracy": round(noisy, 4),
        "noisy_accuracy_draws": EVAL_DRAWS,
        "final_loss": round(history["final_loss"], 5),
        "train_seconds": round(history["seconds"], 1),
        "device": str(ctx.device), "torch": torch.__version__,
        # CPU float reductions depend on the thread count: bit-for-bit retraining needs it.
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(), "command": ctx.command,
    }
    if params:
        card = {**card, "params": dict(params), "recipe": recipe, "augment": settings.augment}
    if history["resumed_from_epoch"]:
        card["resumed_from_epoch"] = history["resumed_from_epoch"]
    card["sha256"] = save_zoo_model(net[1], out, card)
    checkpoint.unlink(missing_ok=True)  # the run is complete; a rerun starts afresh
    return {**card, "weights": str(out)}


def _recipe_name(ctx: TrainContext) -> str:
    recipe = ctx.options.get("recipe") or "auto"
    if recipe not in RECIPES:
        raise ConfigError(f"unknown --recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    if recipe == "auto":
        return "reference" if ctx.dataset.name in CROP_FLIP_DATASETS else "project"
    return recipe


def _settings(ctx: TrainContext, recipe: str, reference: Mapping[str, Any]) -> TrainSettings:
    """Project recipe (cosine, lr 0.05, batch 64, 60 epochs) or the method's reference recipe;
    --epochs/--batch/--lr override either."""
    base: dict[str, Any] = {}
    if recipe == "reference":
        base = {**reference, "schedule": "multistep",
                "augment": "crop-flip" if ctx.dataset.name in CROP_FLIP_DATASETS else "none"}
    base.update({k: ctx.options[k] for k in ("epochs", "batch", "lr")
                 if ctx.options.get(k) is not None})
    return TrainSettings(**base, seed=ctx.seed)


def _describe(s: TrainSettings) -> str:
    wd = f"{s.weight_decay:.0e}".replace("e-0", "e-")
    if s.schedule == "cosine":
        return f"SGD momentum {s.momentum:g}, wd {wd}, cosine schedule"
    steps = ", ".join(str(m) for m in s.milestones)
    return f"SGD momentum {s.momentum:g}, wd {wd}, lr x{s.gamma:g} at epochs {steps}"
