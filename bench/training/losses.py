"""Losses on the *soft* smoothed classifier G(x) = E_delta[softmax(F(x + delta))].

Shared by SmoothAdv (Salman et al. 2019), MACER (Zhai et al. 2020) and consistency
regularization (Jeong & Shin 2020), so they live in the harness rather than in one adapter that
the others would import. Every loss takes logits shaped (B, m, K): B examples, m noise draws
each, K classes, and returns a scalar batch mean. The Monte-Carlo estimate of G averages
*probabilities* over the draws and takes the log afterwards; averaging per-draw
log-probabilities instead (plain CE) is a different, weaker objective. Hyper-parameters arrive
already checked (each adapter's ``PARAMS``), so nothing here re-validates them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def noisy_copies(x: torch.Tensor, m: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """m Gaussian draws per example, shaped (B, m, C, H, W); one generator call per batch."""
    shape = (x.shape[0], m, *x.shape[1:])
    return torch.randn(shape, generator=gen, device=x.device) * sigma


def logits_on(net, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Logits of ``net`` on x[b] + noise[b, i], reshaped to (B, m, K)."""
    b, m = noise.shape[:2]
    out = net((x.unsqueeze(1) + noise).flatten(0, 1))
    return out.view(b, m, -1)


def soft_smoothed_nll(logits: torch.Tensor, y: torch.Tensor, floor: float = 1e-20) -> torch.Tensor:
    """-log of the noise-averaged softmax at the label, batch mean (SmoothAdv's attack loss).

    The floor (SmoothAdv's clamp at 1e-20) keeps the loss finite when G_y underflows.
    """
    g = logits.softmax(dim=-1).mean(dim=1)
    return -g.gather(1, y[:, None]).squeeze(1).clamp_min(floor).log().mean()


def std_normal_icdf(p: torch.Tensor) -> torch.Tensor:
    """Phi^-1, differentiable (what torch.distributions.Normal(0, 1).icdf computes)."""
    return math.sqrt(2.0) * torch.erfinv(2 * p - 1)


def macer_loss(logits: torch.Tensor, y: torch.Tensor, *, sigma: float, lbd: float,
               gamma: float, beta: float) -> torch.Tensor:
    """MACER: soft smoothed CE + lbd * hinge on the certified-radius surrogate.

    Classification term: -log(mean_j softmax(u_j)_y + 1e-10), temperature 1.
    Robustness term, only for examples whose beta-smoothed top-1 is the label:
    (sigma/2) * (gamma - xi) with xi = Phi^-1(p1) - Phi^-1(p2) over the top-2 of
    mean_j softmax(beta * u_j), kept where xi is finite and xi <= gamma. Terms with p2 = 0 or
    p1 = 1 (xi infinite) are dropped, not clipped: they carry no usable gradient.
    Total: (sum of classification terms + lbd * sum of robustness terms) / B.
    """
    b = logits.shape[0]
    g = logits.softmax(dim=-1).mean(dim=1)
    classification = -(g.gather(1, y[:, None]).squeeze(1) + 1e-10).log().sum()
    if lbd == 0:
        return classification / b
    g_beta = (beta * logits).softmax(dim=-1).mean(dim=1)
    top, idx = g_beta.topk(2, dim=1)
    with torch.no_grad():
        xi = std_normal_icdf(top[:, 0]) - std_normal_icdf(top[:, 1])
        keep = (idx[:, 0] == y) & torch.isfinite(xi) & (xi <= gamma)
    p1, p2 = top[keep, 0], top[keep, 1]
    margin = std_normal_icdf(p1) - std_normal_icdf(p2)
    robustness = (sigma / 2) * (gamma - margin).sum()
    return (classification + lbd * robustness) / b


def consistency_loss(logits: torch.Tensor, y: torch.Tensor, *, lbd: float,
                     eta: float) -> torch.Tensor:
    """Jeong & Shin 2020: mean CE over the m copies + lbd * (1/m) sum_i KL(p_bar || p_i)
    + eta * H(p_bar), each averaged over the batch; p_bar = mean_i softmax(u_i)."""
    b, m, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * m, k), y.repeat_interleave(m))
    log_p = logits.log_softmax(dim=-1)
    p_bar = log_p.exp().mean(dim=1)
    log_p_bar = p_bar.clamp_min(1e-20).log()
    # KL(p_bar || p_i) = sum_c p_bar_c (log p_bar_c - log p_i,c)
    kl = (p_bar[:, None, :] * (log_p_bar[:, None, :] - log_p)).sum(-1).mean(1)
    entropy = -(p_bar * log_p_bar).sum(-1)
    return ce + lbd * kl.mean() + eta * entropy.mean()
