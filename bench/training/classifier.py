"""Train one noise-trained classifier end to end: the body every classifier method shares.

Gaussian augmentation, SmoothAdv, MACER, consistency regularization and clean training differ
only in the per-batch loss (and an optional per-epoch hook); the architecture, the seeded
initialisation, the recipe, the resumable loop, the card's clean/noisy accuracy and the
safetensors + card output are the same, so an adapter's ``train`` is one call to
:func:`train_noise_augmented`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.contract import TrainContext
from bench.errors import ConfigError
from bench.nets import NormalizeLayer, build_arch, save_zoo_model
from bench.training.loop import LossFn, noisy_accuracy, train_classifier
from bench.training.recipes import REFERENCE_RECIPE, describe, recipe_name, train_settings

EVAL_DRAWS = 10  # noise draws per test image for the model card's noisy accuracy


def train_noise_augmented(ctx: TrainContext, method: str, loss_fn: LossFn, *,
                          params: Mapping[str, Any] | None = None,
                          epoch_hook: Callable[[int], None] | None = None,
                          reference: Mapping[str, Any] = REFERENCE_RECIPE) -> dict[str, Any]:
    """Build the dataset's architecture (``ctx.arch()``), train it with ``loss_fn``, save
    weights + card; returns the card plus ``weights`` (the .safetensors path).

    ``loss_fn(net, x, y, gen)`` returns the batch loss, drawing any noise from ``gen`` (the
    loop's seeded noise stream); ``params`` (the method's hyper-parameters) go into the card
    and into the checkpoint's fingerprint; ``epoch_hook(e)`` runs before each epoch
    (warm-ups); ``reference`` is the method's published recipe, used with --recipe reference.
    """
    info = ctx.dataset
    arch = ctx.arch()
    recipe = recipe_name(ctx)
    settings = train_settings(ctx, recipe, reference)
    c, h, _ = info.shape
    torch.manual_seed(ctx.seed)  # weight initialisation follows the run seed
    net = torch.nn.Sequential(NormalizeLayer(info.mean, info.std),
                              build_arch(arch, num_classes=info.num_classes, in_channels=c,
                                         image_size=h))
    init = _start_from(ctx, net, arch)
    name = ctx.model_name(method, arch)
    out = Path(ctx.out_dir) / f"{name}.safetensors"
    checkpoint = out.with_suffix(".ckpt")
    fingerprint = {"method": method, "params": dict(params or {}), "arch": arch,
                   "dataset": info.name, "sigma": ctx.sigma, **({"init": init} if init else {})}
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
        "lr": settings.lr, "optimizer": describe(settings),
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
    if init:
        card["init"] = init  # fine-tuned from this registered model (name, arch, sha256)
    if params:
        card = {**card, "params": dict(params), "recipe": recipe, "augment": settings.augment}
    if history["resumed_from_epoch"]:
        card["resumed_from_epoch"] = history["resumed_from_epoch"]
    card["sha256"] = save_zoo_model(net[1], out, card)
    checkpoint.unlink(missing_ok=True)  # the run is complete; a rerun starts afresh
    return {**card, "weights": str(out)}


def _start_from(ctx: TrainContext, net: torch.nn.Sequential, arch: str) -> dict[str, Any] | None:
    """Load ``--init``'s weights into ``net`` (fine-tuning); None when training from scratch.

    The registered model is hash-checked on load; its arch must be the one being trained.
    """
    init = ctx.options.get("init")
    if not init:
        return None
    if init["arch"] != arch:
        raise ConfigError(f"--init {init['name']} is a {init['arch']} network but this run "
                          f"trains {arch}; pass --arch {init['arch']} or another --init")
    if ctx.registered_model is None:
        raise ConfigError("--init needs the registry; none is at hand in this context")
    start = ctx.registered_model(init["name"])
    net[1].load_state_dict(start[1].state_dict())
    return dict(init)
