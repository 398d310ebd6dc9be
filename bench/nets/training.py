"""A small, seeded training loop and noisy-accuracy evaluation shared by training-based methods.

Methods supply the per-batch loss (Gaussian augmentation, SmoothAdv, MACER, ...); the loop
owns shuffling, the optimizer and schedule, the progress bar and determinism (every random
draw comes from generators seeded by the run seed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TrainSettings:
    epochs: int = 60
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                     settings: TrainSettings, *, device: torch.device, progress: bool = True,
                     desc: str = "train") -> dict:
    """SGD with momentum and a cosine schedule over ``epochs``; returns a small history."""
    torch.manual_seed(settings.seed)  # weight init of layers created lazily inside loss_fn
    net.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(x) // settings.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(settings.seed)
    noise = torch.Generator(device=device).manual_seed(settings.seed + 1)
    start = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc=desc, unit="epoch", disable=not progress,
               dynamic_ncols=True)
    last_loss = float("nan")
    for _ in bar:
        order = torch.randperm(len(x), generator=shuffle).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x), settings.batch):
            idx = order[i : i + settings.batch]
            loss = loss_fn(net, x[idx], y[idx], noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        last_loss = float(total) / len(x)  # one host sync per epoch
        bar.set_postfix(loss=f"{last_loss:.4f}")
    net.eval()
    return {"final_loss": last_loss, "seconds": time.perf_counter() - start}


@torch.no_grad()
def noisy_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, *,
                   draws: int = 1, seed: int = 0, batch: int = 1000,
                   device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``net`` on x + N(0, sigma^2 I), averaged over ``draws`` seeded draws."""
    net.eval().to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    hits = torch.zeros((), dtype=torch.long, device=device)
    for _ in range(draws):
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].to(device)
            if sigma > 0:
                xb = xb + sigma * torch.randn(xb.shape, generator=gen, device=device)
            hits += (net(xb).argmax(1) == y[i : i + batch].to(device)).sum()
    return float(hits) / (draws * len(x))
