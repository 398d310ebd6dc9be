"""Train a small class-conditional DDPM: the classifier of the noised diffusion classifiers (NDC).

The same epsilon objective, linear beta schedule (T = 1000) and UNet as the unconditional
denoiser of :mod:`bench.training.ddpm` (its ``SCHEDULE`` and ``UNET_CONFIG`` are imported, not
copied), plus a learned class embedding (``num_class_embeds = K``, added to the timestep
embedding): the network is called as ``unet(x_t, t, class_labels=y)``. No label dropout: NDC only
needs the conditional scores (no classifier-free guidance), so every example keeps its label.

Seeded and resumable exactly as the unconditional trainer: a per-epoch checkpoint in
``<out>/<name>.partial/`` (weights, EMA, optimizer, one-cycle schedule, the shuffling and noise
generators' states, and an identity dict that must match to resume); rerunning the same command
gives the same weights bit for bit on the same device and thread count. The EMA weights are saved
as a diffusers folder ``<out>/<name>`` (``unet/`` + ``scheduler/``, default name
``<dataset>-ddpm-cond``) with ``card.json``; the returned card carries the weights' sha256.

The card also records a cheap sanity check of the class conditioning: the test-set epsilon MSE
with the true label and with a wrong label (same t and eps draws). A conditional model whose
labels matter shows a clear gap; it is what the diffusion classifier turns into a decision.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.contract import TrainContext
from bench.errors import ConfigError
from bench.training.ddpm import build_unet, fit_ddpm

TRAIN_DEFAULTS = {"epochs": 200, "batch": 128, "lr": 2e-3}
# The card's label check: test-set eps MSE at these timesteps, true vs wrong label.
CHECK_TIMESTEPS = (50, 150, 300, 500)


def build_conditional_unet(shape: tuple[int, int, int], num_classes: int):
    """The unconditional digits UNet plus a class embedding (``class_labels=y``)."""
    return build_unet(shape, num_class_embeds=num_classes)


def train_conditional_ddpm(ctx: TrainContext) -> dict[str, Any]:
    """Fit the class-conditional UNet with the epsilon objective (the shared loop of
    :func:`bench.training.ddpm.fit_ddpm`, with ``class_labels``); write the folder + card."""
    info = ctx.dataset
    k = int(info.num_classes)
    y_train = ctx.train[1].long()
    if len(y_train) == 0:
        raise ConfigError("no training images")
    if int(y_train.min()) < 0 or int(y_train.max()) >= k:
        raise ConfigError(f"labels must be in 0..{k - 1} for {info.name}")
    torch.manual_seed(ctx.seed)
    unet = build_conditional_unet(info.shape, k)
    conditioning = {"conditional": True, "num_classes": k, "label_dropout": 0.0}
    card = {"method": "ndc", "arch": "diffusers-unet2d-class-conditional", "dataset": info.name,
            **conditioning, "objective": "epsilon MSE, t ~ U{0..T-1}, class_labels = y"}
    return fit_ddpm(ctx, unet, name=ctx.name or f"{info.name}-ddpm-cond",
                    defaults=TRAIN_DEFAULTS, desc=f"ddpm-cond {info.name}", card=card,
                    labels=y_train, identity=conditioning,
                    measure=lambda ema, abar: label_check(ema, ctx.test, abar, k,
                                                           seed=ctx.seed))


def label_check(unet, test: tuple[torch.Tensor, torch.Tensor], abar: torch.Tensor,
                num_classes: int, *, seed: int = 0) -> dict[str, Any]:
    """Test-set eps MSE with the true label and with the label shifted by one (same x_t), at
    :data:`CHECK_TIMESTEPS`: the gap is the evidence a diffusion classifier works with."""
    x, y = test
    if len(x) == 0:
        return {}
    x0 = x.cpu() * 2 - 1
    y = y.cpu().long()
    gen = torch.Generator().manual_seed(seed + 2)
    true_mse, wrong_mse = [], []
    with torch.inference_mode():
        for t in CHECK_TIMESTEPS:
            a = float(abar[t])
            eps = torch.randn(x0.shape, generator=gen)
            xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
            steps = torch.full((len(x0),), t, dtype=torch.long)
            for labels, acc in ((y, true_mse), ((y + 1) % num_classes, wrong_mse)):
                pred = unet(xt, steps, class_labels=labels).sample
                acc.append(round(float(((pred - eps) ** 2).mean()), 5))
    return {"label_check": {"timesteps": list(CHECK_TIMESTEPS), "eps_mse_true_label": true_mse,
                            "eps_mse_wrong_label": wrong_mse,
                            "what": "test-set eps MSE, true label vs (label + 1) mod K"}}
