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


def train_noise_augmented(ctx: TrainContext, method: str, loss_fn) -> dict[str, Any]:
    """Build the dataset's architecture, train it with ``loss_fn``, save weights + card."""
    info = ctx.dataset
    arch = ctx.options.get("arch") or DEFAULT_ARCH.get(info.name)
    if arch is None:
        raise ConfigError(f"no default architecture to train on {info.name}; pass --arch NAME")
    settings = TrainSettings(**{k: ctx.options[k] for k in ("epochs", "batch", "lr")
                                if ctx.options.get(k) is not None}, seed=ctx.seed)
    c, h, _ = info.shape
    torch.manual_seed(ctx.seed)  # weight initialisation follows the run seed
    net = torch.nn.Sequential(NormalizeLayer(info.mean, info.std),
                              build_arch(arch, num_classes=info.num_classes, in_channels=c,
                                         image_size=h))
    history = train_classifier(net, *ctx.train, loss_fn, settings, device=ctx.device,
                               progress=ctx.progress, desc=f"{method} sigma={ctx.sigma:g}")
    x_test, y_test = ctx.test
    clean = noisy_accuracy(net, x_test, y_test, 0.0, device=ctx.device)
    noisy = noisy_accuracy(net, x_test, y_test, ctx.sigma, draws=EVAL_DRAWS, seed=ctx.seed,
                           device=ctx.device)
    name = ctx.model_name(method, arch)
    card = {
        "name": name, "method": method, "arch": arch, "dataset": info.name,
        "sigma": ctx.sigma, "epochs": settings.epochs, "batch": settings.batch,
        "lr": settings.lr, "optimizer": "SGD momentum 0.9, wd 1e-4, cosine schedule",
        "seed": ctx.seed, "train_images": len(ctx.train[0]), "test_images": len(x_test),
        "clean_accuracy": round(clean, 4),
        "noisy_accuracy": round(noisy, 4),
        "noisy_accuracy_draws": EVAL_DRAWS,
        "final_loss": round(history["final_loss"], 5),
        "train_seconds": round(history["seconds"], 1),
        "device": str(ctx.device), "torch": torch.__version__,
        "python": platform.python_version(), "command": ctx.command,
    }
    out = Path(ctx.out_dir) / f"{name}.safetensors"
    card["sha256"] = save_zoo_model(net[1], out, card)
    return {**card, "weights": str(out)}
