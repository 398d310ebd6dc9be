"""Noised diffusion classifiers (Chen et al., "Diffusion Models are Certifiably Robust
Classifiers", NeurIPS 2024, arXiv 2402.02316): a class-conditional diffusion model as the base
classifier of randomized smoothing.

A module here maps noisy images ``x + delta`` in [0, 1] pixels, (B, C, H, W), to logits (B, K)
``= -L_y``, a weighted denoising loss per class; argmax is the prediction. The harness adds
delta (never drawn here); the classifier's own diffusion noise comes from a stream fixed in
advance (see *Randomness*), so Cohen's certificate holds for it as for any base classifier.

VP (DDPM, ours) <-> VE (EDM, the paper)
---------------------------------------
Our models are diffusers DDPMs on data in [-1, 1] with ``abar_t = alphas_cumprod[t]``:
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``. Dividing by sqrt(abar_t) gives the paper's
variance-exploding chain ``x_VE = x0 + sigma_VE eps`` with

    x_VE = x_VP / sqrt(abar_t),      sigma_VE(t) = sqrt((1 - abar_t) / abar_t)
    (inverse: abar = 1 / (1 + sigma_VE^2),  x_VP = sqrt(abar) x_VE).

The EDM denoiser the paper uses is evaluated with our eps-prediction network as

    D_theta(x_VE; sigma_VE(t), y) = x_VE - sigma_VE(t) * eps_theta(sqrt(abar_t) x_VE, t, y),

the network's x0 estimate (no clipping). Everything below is in VE units of the [-1, 1] range.

The factor 2
------------
The harness gives ``x + delta``, delta ~ N(0, sigma^2 I) in [0, 1] pixels; mapped to [-1, 1]
that is ``x_tau = x' + 2 delta``: the input already sits on the VE chain at
``sigma_tau = 2 sigma`` (paper's sigma_tau; the certified radius still uses the pixel sigma).

The grid (a departure: discrete DDPM timesteps instead of a continuous EDM sigma grid)
--------------------------------------------------------------------------------------
The paper uses ``linspace(sigma_tau, 3, steps)`` (126 points) in continuous EDM sigma. A DDPM
only knows its T timesteps, so the targets ``linspace(sigma_tau, max_noise, skip + grid + 1)``
are rounded *up* to the first timestep whose sigma_VE reaches them (never below the target,
so every level is strictly above sigma_tau): ``sigma_0 = sigma_tau`` (the input itself, no
network call), ``sigma_1 .. sigma_skip`` are skipped levels (the paper skips the first 5 of
126), and the ``grid`` levels ``sigma_{skip+1} .. sigma_{skip+grid}`` are the ones the network
is evaluated at, for every class: ``grid`` UNet passes per class. ``max_noise`` defaults to the
paper's 3. The levels actually used (timesteps and sigma_VE) are in :meth:`describe`.

EPNDC (exact posterior, §8.2)
-----------------------------
For each evaluated level j (pair sigma_{j-1} < sigma_j), with eps_j shared by all classes:

    x_j  = x_tau + sqrt(sigma_j^2 - sigma_tau^2) eps_j          (continue the VE chain from x_tau)
    mu_p = [(sigma_j^2 - sigma_{j-1}^2) D_theta(x_j; sigma_j, y) + sigma_{j-1}^2 x_j] / sigma_j^2
    mu_q = [(sigma_j^2 - sigma_{j-1}^2) x_tau + (sigma_{j-1}^2 - sigma_tau^2) x_j]
           / (sigma_j^2 - sigma_tau^2)
    L_y  = sum_j w_j mean_pixels (mu_p - mu_q)^2,

mu_q being the exact mean of q(x_{sigma_{j-1}} | x_j, x_tau) (variance
``var_q = (sigma_{j-1}^2 - sigma_tau^2)(sigma_j^2 - sigma_{j-1}^2) / (sigma_j^2 - sigma_tau^2)``)
and mu_p the DDPM reverse mean with D plugged in for x0 (variance
``var_p = sigma_{j-1}^2 (sigma_j^2 - sigma_{j-1}^2) / sigma_j^2``, the VE form of DDPM's
posterior variance). Weights (``weights`` param):

* ``paper``: the paper's ``w_j = lambda(sigma_{j-1}) p(sigma_{j-1}) dsigma_j
  * sigma_j^2 (sigma_j^2 - sigma_tau^2) / (4 dsigma_j^2 (sigma_{j-1}^2 - sigma_tau^2))`` with
  ``dsigma_j = sigma_j - sigma_{j-1}``, EDM's ``lambda(s) = (s^2 + s_data^2) / (s s_data)^2``,
  ``s_data = 0.5``, and ``p`` the log-normal density of EDM's training sigmas (P_mean = -1.2,
  P_std = 1.2). The factor ``1 / (sigma_{j-1}^2 - sigma_tau^2)`` is singular at the first pair
  (sigma_0 = sigma_tau), so ``skip >= 1`` is required, as in the paper's code. Departure: ``p``
  is the textbook log-normal pdf ``exp(-(ln s - P_mean)^2 / (2 P_std^2)) / (s P_std
  sqrt(2 pi))``; the reference code multiplies the exponent by P_std^2 instead (algorithms.md
  §8.5 pitfall 4), so our relative weights differ from its.
* ``elbo``: ``w_j = 1 / (2 var_p)``, which makes ``L_y`` the class-dependent part of the exact
  negative ELBO of log p(x_tau | y) on this discrete chain: for j >= 2 the KL between
  q(. | x_j, x_tau) and the model's Gaussian reverse kernel (variance var_p) is
  ``|mu_p - mu_q|^2 / (2 var_p)`` plus terms that do not depend on y; for j = 1 (sigma_0 =
  sigma_tau, where var_q = 0 and mu_q = x_tau) the term is the reconstruction term
  ``-log p_theta(x_tau | x_1)`` with the same form. Nothing is singular, so ``skip = 0`` is
  allowed; the prior term at the top level does not depend on y.

APNDC (approximate posterior, §8.2)
-----------------------------------
One-shot denoise with the *unconditional* model (:class:`bench.diffusion.Denoiser`, DDS's
timestep t* = first t with sigma_VE >= 2 sigma, clipped to [-1, 1]: a departure from the paper's
``D_uncond(x_tau; sigma_tau)`` at exactly sigma_tau), then the plain diffusion classifier on the
estimate ``x0_hat`` over the same grid, with fresh noise shared by all classes:

    x_j = x0_hat + sigma_j eps_j,
    L_y = sum_j w_j mean_pixels (D_theta(x_j; sigma_j, y) - x0_hat)^2

with ``paper`` weights ``lambda(sigma_j) p(sigma_j) dsigma_j`` (the EDM Euler integral of §8.1)
or ``elbo`` weights ``(sigma_j^2 - sigma_{j-1}^2) / (2 sigma_j^2 sigma_{j-1}^2)`` (the DDPM
KL term of the pair, written for x0: mu_p - mu_q = (sigma_j^2 - sigma_{j-1}^2)/sigma_j^2 (D -
x0)). One extra UNet pass per call for the denoising.

Weights are normalized to sum to 1 over the evaluated levels (a positive rescaling: the class
ranking is unchanged, and the loss reads as a weighted mean squared error per pixel).

Randomness and variance reduction
---------------------------------
Within one evaluation (one noisy sample) every class sees the same ``eps_j`` (a paired comparison,
the paper's ``share_noise``). The eps of a sample come from a
:class:`bench.certify.noise.NoiseStream` of shape (grid, C, H, W) seeded by ``(noise_seed + run
seed, image index, PHASE_NDC + harness phase)`` -- stream phases 12, 13, 14, distinct from the
harness's 0..2 (the delta streams) and DiffSmooth's 7..9 -- and restarted by
:meth:`NoisedDiffusionClassifier.begin_phase`, which :class:`bench.certify.smoothing.Smooth` calls
before each phase. So the i-th noisy sample of a phase always gets the i-th draw: results do not
depend on the batch split, on resuming, nor on N0 (the estimation phase has its own stream), and the
draws are fixed before any count is seen (never re-drawn adaptively). They are independent of delta,
as randomized smoothing requires.

Sift-and-refine (many classes)
------------------------------
With more classes than ``sift_keep``, classes are first scored on ``sift_grid`` evenly spaced
levels of the grid, one level at a time; after each level a class is dropped for a sample when
its weighted mean loss so far exceeds the sample's best by more than ``sift_margin`` (units of
the normalized loss), until at most ``sift_keep`` remain (if more remain after the sift levels,
the ``sift_keep`` best are kept). The survivors are then scored on the full grid, reusing their
sift-level terms (the same eps, so the same values): a survivor's loss equals full scoring's.
Dropped classes get finite logits below every survivor's. Everything is batched over (sample,
class, level) rows. The declared cost is then the worst case ``K * sift_levels + sift_keep *
(grid - sift_levels)``; the exact count is kept in ``passes`` (see :meth:`describe`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.certify.noise import PHASE_SELECT, NoiseStream
from bench.contract import Cost
from bench.diffusion import Denoiser, DiffusionModel
from bench.errors import ConfigError, ModelError

VARIANTS = ("ep", "ap")
WEIGHTS = ("paper", "elbo")
# Stream phase of the classifier's noise during harness phase p: PHASE_NDC + p (12, 13, 14).
PHASE_NDC = 12
# EDM constants used by the paper's weights.
SIGMA_DATA, P_MEAN, P_STD = 0.5, -1.2, 1.2
PAPER_MAX_NOISE = 3.0


# ----------------------------------------------------------------------------------------------
# VP <-> VE


def sigma_ve(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_VE(t) = sqrt((1 - abar_t) / abar_t) (float64)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - abar) / abar).sqrt()


def abar_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor:
    """The inverse map: abar = 1 / (1 + sigma_VE^2)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1 / (1 + s * s)


def vp_to_ve(x_vp: torch.Tensor, abar: float) -> torch.Tensor:
    return x_vp / math.sqrt(abar)


def ve_to_vp(x_ve: torch.Tensor, abar: float) -> torch.Tensor:
    return x_ve * math.sqrt(abar)


def grid_timesteps(alphas_cumprod: torch.Tensor, sigma_tau: float, grid: int, *, skip: int = 0,
                   max_noise: float = PAPER_MAX_NOISE) -> tuple[list[int], list[float]]:
    """Timesteps and sigma_VE of the levels sigma_1 .. sigma_{skip+grid} (module docstring):
    targets linspace(sigma_tau, max_noise, skip + grid + 1)[1:] rounded up to timesteps."""
    if grid < 1 or skip < 0:
        raise ConfigError(f"the NDC grid needs grid >= 1 and skip >= 0, got {grid}, {skip}")
    s = sigma_ve(alphas_cumprod)
    if not max_noise > sigma_tau:
        raise ConfigError(f"max_noise {max_noise:g} must exceed the input's noise level "
                          f"2*sigma = {sigma_tau:g} (VE units of the [-1, 1] range)")
    if float(s[-1]) < max_noise:
        raise ConfigError(f"the diffusion schedule never reaches max_noise {max_noise:g} "
                          f"(its largest sigma_VE is {float(s[-1]):.3g})")
    targets = np.linspace(sigma_tau, max_noise, skip + grid + 1)[1:]
    steps = [int(torch.searchsorted(s, torch.tensor(v, dtype=torch.float64))) for v in targets]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"an NDC grid of {grid + skip} levels between {sigma_tau:g} and "
                          f"{max_noise:g} is finer than the model's {len(s)} timesteps; use a "
                          "smaller grid")
    return steps, [float(s[t]) for t in steps]


# ----------------------------------------------------------------------------------------------
# Per-pair coefficients and weights (float64 scalars; tested against brute force)


def ep_coefficients(s_prev: float, s_next: float, s_tau: float) -> dict[str, float]:
    """EPNDC pair (s_prev < s_next, both >= s_tau): the chain step, mu_p and mu_q as linear
    combinations, and the two variances.

    x_next = x_tau + noise * eps;  mu_p = p_x0 * D + p_x * x_next;
    mu_q = q_tau * x_tau + q_x * x_next.
    """
    a, b, c = s_next ** 2, s_prev ** 2, s_tau ** 2
    return {"noise": math.sqrt(a - c), "p_x0": (a - b) / a, "p_x": b / a,
            "q_tau": (a - b) / (a - c), "q_x": (b - c) / (a - c),
            "var_q": (b - c) * (a - b) / (a - c), "var_p": b * (a - b) / a}


def edm_lambda(s: float) -> float:
    return (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2


def lognormal_pdf(s: float) -> float:
    """Density of sigma when ln sigma ~ N(P_MEAN, P_STD^2) (textbook form)."""
    return math.exp(-((math.log(s) - P_MEAN) ** 2) / (2 * P_STD ** 2)) / (
        s * P_STD * math.sqrt(2 * math.pi))


def ep_weight(s_prev: float, s_next: float, s_tau: float, weights: str) -> float:
    """Unnormalized EPNDC weight of a pair (module docstring)."""
    if weights == "elbo":
        return 1.0 / (2 * ep_coefficients(s_prev, s_next, s_tau)["var_p"])
    ds = s_next - s_prev
    gap = s_prev ** 2 - s_tau ** 2
    if gap <= 0:
        raise ConfigError("the paper's EPNDC weight is singular at sigma = sigma_tau; use "
                          "skip >= 1 (or weights: elbo)")
    return (edm_lambda(s_prev) * lognormal_pdf(s_prev) * ds
            * s_next ** 2 * (s_next ** 2 - s_tau ** 2) / (4 * ds ** 2 * gap))


def ap_weight(s_prev: float, s_next: float, weights: str) -> float:
    """Unnormalized APNDC (plain diffusion classifier) weight of the level s_next."""
    if weights == "elbo":
        return (s_next ** 2 - s_prev ** 2) / (2 * s_next ** 2 * s_prev ** 2)
    return edm_lambda(s_next) * lognormal_pdf(s_next) * (s_next - s_prev)


# ----------------------------------------------------------------------------------------------
# The classifier


class NoisedDiffusionClassifier(nn.Module):
    """EPNDC / APNDC as a base classifier: noisy images in [0, 1] -> logits ``-L_y`` (B, K)."""

    def __init__(self, conditional: DiffusionModel, num_classes: int, *,
                 shape: Sequence[int], sigma: float, variant: str = "ep", grid: int = 20,
                 skip: int = 1, max_noise: float = PAPER_MAX_NOISE, weights: str = "paper",
                 denoiser: Denoiser | None = None, noise_seed: int = 0, sift_keep: int = 10,
                 sift_grid: int = 5, sift_margin: float = 0.05, max_rows: int = 1024):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"NDC variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if weights not in WEIGHTS:
            raise ConfigError(f"NDC weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if variant == "ap" and denoiser is None:
            raise ConfigError("APNDC needs an unconditional denoiser (model role 'denoiser')")
        if not isinstance(conditional, DiffusionModel):
            raise ConfigError("the NDC's conditional model must be a diffusion model (source "
                              "diffusers or python)")
        if variant == "ep" and weights == "paper" and skip < 1:
            raise ConfigError("EPNDC with the paper's weights needs skip >= 1 (the weight is "
                              "singular at sigma_tau); or use weights: elbo")
        self.model, self.denoiser = conditional, (denoiser if variant == "ap" else None)
        self.num_classes, self.shape = int(num_classes), tuple(int(v) for v in shape)
        self.sigma, self.sigma_tau = float(sigma), 2 * float(sigma)
        self.variant, self.weights = variant, weights
        self.grid, self.skip, self.max_noise = int(grid), int(skip), float(max_noise)
        self.noise_seed, self.max_rows = int(noise_seed), int(max_rows)
        abar = conditional.alphas_cumprod
        steps, levels = grid_timesteps(abar, self.sigma_tau, self.grid, skip=self.skip,
                                       max_noise=self.max_noise)
        prev = [self.sigma_tau, *levels][self.skip : self.skip + self.grid]
        self.timesteps = steps[self.skip :]
        self.levels = levels[self.skip :]
        self.prev_levels = prev
        raw = [ep_weight(a, b, self.sigma_tau, weights) if variant == "ep"
               else ap_weight(a, b, weights) for a, b in zip(prev, self.levels, strict=True)]
        total = sum(raw)
        self.weight_values = [w / total for w in raw]
        g = len(self.levels)
        # Per level: network input scale sqrt(abar_t), and the linear combinations of the
        # difference (mu_p - mu_q) [EP] or (D - x0_hat) [AP] in terms of (D, x_j, base).
        sqrt_abar, noise, c_d, c_x, c_base = [], [], [], [], []
        for sp, sn, t in zip(prev, self.levels, self.timesteps, strict=True):
            sqrt_abar.append(math.sqrt(float(abar[t])))
            if variant == "ep":
                k = ep_coefficients(sp, sn, self.sigma_tau)
                noise.append(k["noise"])
                c_d.append(k["p_x0"])
                c_x.append(k["p_x"] - k["q_x"])
                c_base.append(-k["q_tau"])
            else:
                noise.append(sn)
                c_d.append(1.0)
                c_x.append(0.0)
                c_base.append(-1.0)
        for name, values in (("sqrt_abar", sqrt_abar), ("noise_scale", noise), ("c_d", c_d),
                             ("c_x", c_x), ("c_base", c_base),
                             ("level", self.levels), ("weight", self.weight_values)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32),
                                 persistent=False)
        self.register_buffer("t_index", torch.tensor(self.timesteps, dtype=torch.long),
                             persistent=False)
        k = self.num_classes
        self.sift_keep, self.sift_margin = int(sift_keep), float(sift_margin)
        self.sifting = k > self.sift_keep >= 1
        self.sift_levels = (sorted(set(np.linspace(0, g - 1, max(1, min(sift_grid, g)))
                                       .round().astype(int).tolist())) if self.sifting else [])
        worst = (k * len(self.sift_levels) + self.sift_keep * (g - len(self.sift_levels))
                 if self.sifting else k * g)
        self.passes_per_call = worst + (1 if self.denoiser is not None else 0)
        self.cost = Cost(m=1, classifier_passes=0, diffusion_passes=self.passes_per_call)
        self.passes = 0  # UNet passes actually run (denoiser included)
        self.samples = 0  # noisy samples classified
        self.stream: NoiseStream | None = None
        self._phase = (0, 0, PHASE_SELECT)
        self.begin_phase(0, 0, PHASE_SELECT)

    # ----- randomness ------------------------------------------------------------------------
    def begin_phase(self, seed: int, index: int, phase: int) -> None:
        """Restart the classifier's noise stream for one phase of one image (Smooth calls it
        before each phase): the i-th sample of the phase gets the i-th draw."""
        self._phase = (self.noise_seed + int(seed), int(index), PHASE_NDC + int(phase))
        self.stream = None  # created on the first call, on the input's device

    def noise_streams(self, phases: Sequence[int]) -> list[dict[str, Any]]:
        """The eps streams this classifier draws from during the harness's ``phases`` (for
        the run's card)."""
        return [{"phase": PHASE_NDC + int(p),
                 "seed": f"SeedSequence([run seed + noise_seed {self.noise_seed}, image "
                         f"index, phase])",
                 "draws": f"NDC eps, ({len(self.levels)}, {', '.join(map(str, self.shape))}) "
                          f"per noisy sample of harness phase {p}"} for p in phases]

    def draw(self, b: int, device: torch.device) -> torch.Tensor:
        """The next b draws of the stream: (b, grid, C, H, W) standard normal."""
        if self.stream is None or self.stream.device != torch.device(device):
            self.stream = NoiseStream((len(self.levels), *self.shape), device, *self._phase)
        return self.stream.fill(torch.empty((b, len(self.levels), *self.shape),
                                            dtype=torch.float32, device=device))

    # ----- evaluation ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ModelError(f"NDC expects images of shape {self.shape}, got "
                             f"{tuple(x.shape[1:])}")
        b, k, g = x.shape[0], self.num_classes, len(self.levels)
        x = x.float()
        eps = self.draw(b, x.device)
        if self.denoiser is not None:
            base = self.denoiser(x).float() * 2 - 1  # x0_hat in [-1, 1]
            self.passes += b
        else:
            base = x * 2 - 1  # x_tau = x' + 2 delta: the VE chain at sigma_tau = 2 sigma
        self.samples += b
        loss = torch.zeros((b, k), dtype=torch.float64, device=x.device)
        alive = torch.ones((b, k), dtype=torch.bool, device=x.device)
        done = torch.zeros((b, g), dtype=torch.bool, device=x.device)
        penalty = torch.zeros((b, k), dtype=torch.float64, device=x.device)
        if self.sifting:
            alive, penalty = self._sift(base, eps, loss, alive, done)
        # Refine (or full scoring): every alive class on every level not yet scored.
        rows = (alive.unsqueeze(2) & ~done.unsqueeze(1)).nonzero()
        self._accumulate(base, eps, rows, loss)
        logits = -loss
        if self.sifting:
            floor = torch.where(alive, logits, torch.full_like(logits, math.inf)).amin(1,
                                                                                        True)
            logits = torch.where(alive, logits, floor - 1 - penalty)
        return logits.float()

    def _sift(self, base, eps, loss, alive, done):
        """Drop classes level by level (module docstring); updates loss and done in place."""
        b = base.shape[0]
        seen = torch.zeros(b, dtype=torch.float64, device=base.device)  # weight mass so far
        active = torch.ones(b, dtype=torch.bool, device=base.device)
        for j in self.sift_levels:
            active &= alive.sum(1) > self.sift_keep
            if not bool(active.any()):
                break
            pairs = (alive & active.unsqueeze(1)).nonzero()
            rows = torch.cat([pairs, torch.full_like(pairs[:, :1], j)], dim=1)
            self._accumulate(base, eps, rows, loss)
            done[active, j] = True
            seen[active] += float(self.weight[j])
            mean = loss / seen.clamp_min(1e-300).unsqueeze(1)
            best = torch.where(alive, mean, torch.full_like(mean, math.inf)).amin(1, True)
            drop = alive & active.unsqueeze(1) & (mean - best > self.sift_margin)
            alive = alive & ~drop
        # Still too many: keep the sift_keep best by their mean loss so far.
        mean = loss / seen.clamp_min(1e-300).unsqueeze(1)
        over = alive.sum(1) > self.sift_keep
        if bool(over.any()):
            ranked = torch.where(alive, mean, torch.full_like(mean, math.inf))
            top = ranked.topk(self.sift_keep, dim=1, largest=False).indices
            keep = torch.zeros_like(alive).scatter_(1, top, True)
            alive = torch.where(over.unsqueeze(1), alive & keep, alive)
        best = torch.where(alive, mean, torch.full_like(mean, math.inf)).amin(1, True)
        penalty = torch.where(alive, torch.zeros_like(mean), (mean - best).clamp_min(0))
        loss.masked_fill_(~alive, 0.0)
        return alive, penalty

    def _accumulate(self, base, eps, rows, loss):
        """Add w_j * term(b, y, j) to loss[b, y] for every row (b, y, j), max_rows at a time."""
        for start in range(0, rows.shape[0], self.max_rows):
            r = rows[start : start + self.max_rows]
            bi, yi, ji = r[:, 0], r[:, 1], r[:, 2]
            view = (-1,) + (1,) * len(self.shape)
            x_j = base[bi] + self.noise_scale[ji].view(view) * eps[bi, ji]
            d = self.denoise(x_j, ji, yi)
            diff = (self.c_d[ji].view(view) * d + self.c_x[ji].view(view) * x_j
                    + self.c_base[ji].view(view) * base[bi])
            term = diff.pow(2).flatten(1).mean(1).double() * self.weight[ji].double()
            loss.index_put_((bi, yi), term, accumulate=True)
            self.passes += r.shape[0]

    def denoise(self, x_ve: torch.Tensor, level_index: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """D_theta(x_VE; sigma_VE(t_j), y) = x_VE - sigma_VE * eps(sqrt(abar_t) x_VE, t_j, y)."""
        view = (-1,) + (1,) * len(self.shape)
        x_vp = x_ve * self.sqrt_abar[level_index].view(view)
        eps_hat = conditional_eps(self.model, x_vp, self.t_index[level_index], labels)
        return x_ve - self.level[level_index].view(view) * eps_hat

    # ----- card ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "variant": {"ep": "EPNDC (exact posterior)", "ap": "APNDC (approximate posterior)"}[
                self.variant],
            "weights": self.weights, "grid": len(self.levels), "skip": self.skip,
            "max_noise_ve": self.max_noise, "sigma": self.sigma,
            "sigma_tau_ve": self.sigma_tau,
            "timesteps": self.timesteps,
            "sigma_ve": [round(v, 5) for v in self.levels],
            "sqrt_alpha_bar": [round(float(v), 5) for v in self.sqrt_abar],
            "normalized_weights": [round(v, 5) for v in self.weight_values],
            "unet_passes_per_call": self.passes_per_call,
            "passes_formula": (f"{self.num_classes} classes x {len(self.levels)} levels"
                               + (" + 1 denoising" if self.denoiser is not None else "")
                               + (f" (worst case with sift-and-refine: {len(self.sift_levels)} "
                                  f"sift levels, keep {self.sift_keep})" if self.sifting
                                  else "")),
            "noise": f"shared by all classes; stream phases {PHASE_NDC}+harness phase, seed "
                     f"noise_seed {self.noise_seed} + run seed",
        }
        if self.denoiser is not None:
            out["denoiser"] = self.denoiser.describe()
        if self.sifting:
            out["sift"] = {"levels": self.sift_levels, "keep": self.sift_keep,
                           "margin": self.sift_margin}
        return out


def conditional_eps(model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """eps_theta(x_t, t, y) of a class-conditional model (per-row timesteps and labels)."""
    step = t.to(x_t.device)
    if model.timestep_scale != 1.0:
        step = step.double() * model.timestep_scale
    out = model.net(x_t, step, class_labels=labels.to(x_t.device))
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    c = x_t.shape[1]
    if out.shape[1] == 2 * c:  # learned variance: eps first
        out = out[:, :c]
    elif out.shape[1] != c:
        raise ModelError(f"the conditional model returned {out.shape[1]} channels for "
                         f"{c}-channel images")
    return out.to(x_t.dtype)
