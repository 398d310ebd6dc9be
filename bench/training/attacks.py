"""SmoothAdv attacks (Salman et al. 2019) on the soft smoothed classifier, and the epsilon warm-up.

Used by SmoothAdv and by consistency regularization's ``base: smoothadv``, hence here and not in
either adapter. Both attacks maximise -log((1/m) sum_i softmax(F(x' + delta_i))_y) over
||x' - x||_2 <= epsilon with the noise draws delta_i fixed (the same draws the training step then
reuses). The network is put in eval mode and only the input gradient is taken; no parameter
gradients are accumulated. Perturbations are per example, shared by its m noisy copies; epsilon
is in [0, 1] pixel units.
"""

from __future__ import annotations

import math

import torch

from bench.training.losses import logits_on, soft_smoothed_nll


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped (B, 1, ..., 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _unit_gradient(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-example unit-norm gradient; an all-zero gradient becomes a random unit direction
    (otherwise a saturated example would never move)."""
    norm = _per_example_norm(g)
    zero = norm.flatten() == 0
    if bool(zero.any()):
        rand = torch.randn(g.shape, generator=gen, device=g.device)
        g = torch.where(zero.view_as(norm), rand, g)
        norm = _per_example_norm(g)
    return g / norm


def _project(x: torch.Tensor, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Clip x + delta to [0, 1], then shrink delta to norm <= epsilon. Shrinking keeps the clip:
    x + c*delta (0 <= c <= 1) lies between two points of the box."""
    delta = (x + delta).clamp(0, 1) - x
    norm = _per_example_norm(delta)
    return delta * torch.clamp(epsilon / norm.clamp_min(1e-12), max=1.0)


def _attack_loss(net, x, delta, y, noise) -> torch.Tensor:
    return soft_smoothed_nll(logits_on(net, x + delta, noise), y)


def smoothadv_pgd(net, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, *,
                  epsilon: float, steps: int, gen: torch.Generator) -> torch.Tensor:
    """SmoothAdv-PGD: ``steps`` normalized-gradient ascent steps of size 2*epsilon/steps from
    delta = 0 (no random start), each followed by clipping to [0, 1] and projection onto the
    epsilon ball. ``noise``: (B, m, C, H, W). Returns the adversarial points x + delta."""
    if epsilon <= 0 or steps <= 0:
        return x.detach()
    was_training = net.training
    net.eval()
    x = x.detach()
    delta = torch.zeros_like(x)
    step = 2 * epsilon / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = _attack_loss(net, x, delta, y, noise)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = _project(x, delta + step * _unit_gradient(grad, gen), epsilon)
    net.train(was_training)
    return (x + delta).detach()


def smoothadv_ddn(net, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, *,
                  epsilon: float, steps: int, gen: torch.Generator, init_norm: float = 1.0,
                  gamma: float = 0.05) -> torch.Tensor:
    """SmoothAdv-DDN (decoupled direction and norm, Rony et al. 2019, on the soft smoothed loss).

    Each step: an SGD step (lr cosine-annealed 1 -> 0.01) along the normalized gradient, then
    delta is rescaled to the per-example norm rho, where rho shrinks by (1 - gamma) once the
    majority vote over the noisy copies is wrong and grows by (1 + gamma) otherwise; x + delta
    is quantized to 8-bit levels and clipped to [0, 1]. The smallest delta that fooled the vote
    is kept (else the last one), and the result is renormed to <= epsilon.
    """
    if epsilon <= 0 or steps <= 0:
        return x.detach()
    was_training = net.training
    net.eval()
    x = x.detach()
    b = x.shape[0]
    delta = torch.zeros_like(x)
    rho = torch.full((b,), float(init_norm), device=x.device)
    best = torch.zeros_like(x)
    best_norm = torch.full((b,), math.inf, device=x.device)
    shape = (-1, *([1] * (x.dim() - 1)))
    for i in range(steps):
        lr = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * i / steps)) / 2
        delta.requires_grad_(True)
        logits = logits_on(net, x + delta, noise)
        loss = soft_smoothed_nll(logits, y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(1)
            fooled = votes.argmax(1) != y
            norm = _per_example_norm(delta).flatten()
            better = fooled & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best[better] = delta[better]
            rho = torch.where(fooled, rho * (1 - gamma), rho * (1 + gamma))
            delta = delta + lr * _unit_gradient(grad, gen)
            delta = delta * (rho.view(shape) / _per_example_norm(delta).clamp_min(1e-12))
            delta = ((x + delta) * 255).round().div(255).clamp(0, 1) - x
    with torch.no_grad():
        found = torch.isfinite(best_norm).view(shape)
        delta = _project(x, torch.where(found, best, delta), epsilon)
    net.train(was_training)
    return (x + delta).detach()


ATTACKS = {"pgd": smoothadv_pgd, "ddn": smoothadv_ddn}


class EpsilonWarmup:
    """epsilon_e = min(epsilon, (e + 1) * epsilon / warmup) for epoch e (0-based); warmup 0 or 1
    means the full budget from the start. Pass ``set_epoch`` as the loop's ``epoch_hook`` and
    read ``current`` in the loss."""

    def __init__(self, epsilon: float, warmup: int):
        self.epsilon, self.warmup = epsilon, warmup
        self.current = epsilon if warmup <= 1 else epsilon / warmup

    def set_epoch(self, epoch: int) -> None:
        self.current = self.epsilon if self.warmup <= 1 else min(
            self.epsilon, (epoch + 1) * self.epsilon / self.warmup)
