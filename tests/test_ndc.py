"""Noised diffusion classifiers (bench.ndc, methods/ndc.py): the math on a toy problem with an
exact class posterior, the weights against brute force, the VP/VE mapping, the classifier's own
randomness (fixed in advance, batch/resume invariant), sift-and-refine, the CLI, the trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.certify.noise import PHASE_ESTIMATE, PHASE_PREDICT, PHASE_SELECT, NoiseStream
from bench.certify.procedures.base import PROBE_PHASE
from bench.certify.smoothing import Smooth
from bench.diffusion import Denoiser, DiffusionModel
from bench.errors import ConfigError
from bench.ndc import (
    PHASE_NDC,
    NoisedDiffusionClassifier,
    abar_from_sigma,
    ap_weight,
    edm_lambda,
    ep_coefficients,
    ep_weight,
    grid_timesteps,
    lognormal_pdf,
    sigma_ve,
    ve_to_vp,
    vp_to_ve,
)
from bench.nets.loaders import ZOO_DIR


def linear_abar():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


TOY_MODELS = '''import torch
from torch import nn


def linear_abar():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


class GaussCond(nn.Module):
    """The exact eps-prediction of class-conditional Gaussians x0 | y ~ N(m_y, s^2 I) ([-1, 1]
    range) under the linear DDPM schedule: E[eps | x_t, y] = sqrt(1 - a)(x_t - sqrt(a) m_y) /
    (a s^2 + 1 - a)."""

    def __init__(self, means=None, s=0.3):
        super().__init__()
        if means is None:  # ten fixed 8x8 "digit" means for CLI tests
            g = torch.Generator().manual_seed(0)
            means = torch.rand(10, 1, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8
        self.register_buffer("means", means.double())
        self.s = float(s)
        self.alphas_cumprod = linear_abar()

    def forward(self, x_t, t, class_labels=None):
        a = self.alphas_cumprod.to(x_t.device)[t.long()].view(-1, *([1] * (x_t.dim() - 1)))
        m = self.means[class_labels]
        eps = (1 - a).sqrt() * (x_t.double() - a.sqrt() * m) / (a * self.s ** 2 + 1 - a)
        return eps.to(x_t.dtype)


class GaussMix(nn.Module):
    """The exact (unconditional) eps of the uniform mixture of those Gaussians."""

    def __init__(self, means=None, s=0.3):
        super().__init__()
        self.cond = GaussCond(means, s)
        self.alphas_cumprod = self.cond.alphas_cumprod

    def forward(self, x_t, t):
        t = t.long().reshape(-1).expand(x_t.shape[0])
        a = self.alphas_cumprod.to(x_t.device)[t].view(-1, 1)
        m = self.cond.means.flatten(1)
        d2 = ((x_t.double().flatten(1)[:, None] - a.sqrt()[:, None] * m[None]) ** 2).sum(2)
        post = (-d2 / (2 * (a * self.cond.s ** 2 + 1 - a))).softmax(1)
        eps = torch.stack([self.cond(x_t, t, torch.full_like(t, y)).double()
                           for y in range(m.shape[0])], 1)
        return (post.view(*post.shape, 1, 1, 1) * eps).sum(1).to(x_t.dtype)
'''
_toy: dict = {}
exec(compile(TOY_MODELS, "toy_models", "exec"), _toy)  # noqa: S102 - the same code the CLI imports
GaussCond, GaussMix = _toy["GaussCond"], _toy["GaussMix"]


class Problem:
    """K Gaussian classes in the [-1, 1] range, noisy inputs at sigma, the exact posterior."""

    def __init__(self, k=3, shape=(1, 3, 3), s=0.25, sigma=0.25, n=200, scale=0.8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.k, self.shape, self.s, self.sigma = k, shape, s, sigma
        self.means = (torch.rand(k, *shape, dtype=torch.float64, generator=g) * 2 - 1) * scale
        self.y = torch.randint(0, k, (n,), generator=g)
        x0 = self.means[self.y] + s * torch.randn(n, *shape, dtype=torch.float64, generator=g)
        tau = 2 * sigma
        x_tau = x0 + tau * torch.randn(x0.shape, dtype=torch.float64, generator=g)
        d2 = ((x_tau[:, None] - self.means[None]) ** 2).flatten(2).sum(2)
        self.posterior = (-d2 / (2 * (s ** 2 + tau ** 2))).softmax(1)  # p(y | x_tau)
        self.inputs = ((x_tau + 1) / 2).float()  # what the harness hands over: x + delta

    def conditional(self):
        return DiffusionModel(GaussCond(self.means, self.s), linear_abar())

    def denoiser(self):
        return Denoiser(DiffusionModel(GaussMix(self.means, self.s), linear_abar()),
                        sigma=self.sigma)

    def classifier(self, **kw):
        kw.setdefault("denoiser", self.denoiser() if kw.get("variant") == "ap" else None)
        return NoisedDiffusionClassifier(self.conditional(), self.k, shape=self.shape,
                                         sigma=self.sigma, **kw).eval()


# ----------------------------------------------------------------------------------------------
# (a) the ELBO classifier ranks classes as the exact posterior does


@pytest.mark.parametrize(("variant", "weights", "skip"), [
    ("ep", "elbo", 0), ("ep", "paper", 1), ("ap", "paper", 0), ("ap", "elbo", 0)])
def test_ranks_classes_like_the_exact_posterior(variant, weights, skip):
    prob = Problem()
    clf = prob.classifier(variant=variant, weights=weights, skip=skip, grid=20)
    with torch.inference_mode():
        logits = sum(clf(prob.inputs) for _ in range(8))  # 8 draws per point
    pred, best = logits.argmax(1), prob.posterior.argmax(1)
    confident = prob.posterior.max(1).values > 0.9
    assert confident.sum() >= 40
    assert (pred == best).float().mean() >= 0.85
    assert (pred[confident] == best[confident]).float().mean() >= 0.97
    # Better than chance by far, and close to the Bayes classifier's accuracy.
    bayes = (best == prob.y).float().mean()
    assert (pred == prob.y).float().mean() >= bayes - 0.08


# ----------------------------------------------------------------------------------------------
# (b) EPNDC posterior, model mean and weights against brute force


@pytest.mark.parametrize(("s_prev", "s_next", "s_tau"), [(0.6, 0.7, 0.5), (1.0, 1.9, 0.25),
                                                          (0.5, 0.8, 0.5)])
def test_posterior_mean_and_variance_by_gaussian_conditioning(s_prev, s_next, s_tau):
    """q(x_prev | x_next, x_tau) from the joint covariance of the VE chain started at x_tau."""
    v_prev, v_next = s_prev ** 2 - s_tau ** 2, s_next ** 2 - s_tau ** 2
    cov = np.array([[v_prev, v_prev], [v_prev, v_next]])  # (x_prev, x_next) - x_tau
    gain = cov[0, 1] / cov[1, 1]
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    x_tau, x_next = 0.3, -1.1
    mean = x_tau + gain * (x_next - x_tau)
    k = ep_coefficients(s_prev, s_next, s_tau)
    assert k["q_tau"] * x_tau + k["q_x"] * x_next == pytest.approx(mean, abs=1e-12)
    assert k["var_q"] == pytest.approx(cond_var, abs=1e-12)
    assert k["noise"] == pytest.approx(math.sqrt(v_next))
    # Monte Carlo: regress x_prev on x_next over simulated chains.
    rng = np.random.default_rng(0)
    prev = x_tau + math.sqrt(v_prev) * rng.standard_normal(400_000)
    nxt = prev + math.sqrt(v_next - v_prev) * rng.standard_normal(400_000)
    slope = np.cov(prev, nxt)[0, 1] / np.var(nxt, ddof=1)
    assert slope == pytest.approx(k["q_x"], abs=0.01)


@pytest.mark.parametrize(("t_prev", "t_next"), [(100, 180), (300, 310), (145, 600)])
def test_model_mean_is_the_ddpm_posterior_mean_in_ve_units(t_prev, t_next):
    """mu_p (VE) = the DDPM posterior mean q(x_prev | x_next, x0) in VP units / sqrt(abar_prev)."""
    abar = linear_abar()
    a_p, a_n = float(abar[t_prev]), float(abar[t_next])
    x0, x_next_vp = torch.tensor(0.4, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    alpha = a_n / a_p  # the VP transition prev -> next
    mean_vp = (math.sqrt(a_p) * (1 - alpha) / (1 - a_n) * x0
               + math.sqrt(alpha) * (1 - a_p) / (1 - a_n) * x_next_vp)
    var_vp = (1 - alpha) * (1 - a_p) / (1 - a_n)
    s = sigma_ve(abar)
    k = ep_coefficients(float(s[t_prev]), float(s[t_next]), 0.0)
    x_next_ve = vp_to_ve(x_next_vp, a_n)
    mu_p = k["p_x0"] * x0 + k["p_x"] * x_next_ve
    assert float(mu_p) == pytest.approx(float(vp_to_ve(mean_vp, a_p)), abs=1e-9)
    assert k["var_p"] == pytest.approx(var_vp / a_p, rel=1e-9)


def test_elbo_weight_is_the_class_dependent_part_of_the_exact_kl():
    """KL(q || p_y1) - KL(q || p_y2) = w (|mu_p1 - mu_q|^2 - |mu_p2 - mu_q|^2), w = 1/(2 var_p),
    and at sigma_prev = sigma_tau the reconstruction term -log p(x_tau | x_1) has the same form."""
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    s_prev, s_next, s_tau = 0.7, 0.9, 0.5
    k = ep_coefficients(s_prev, s_next, s_tau)
    w = ep_weight(s_prev, s_next, s_tau, "elbo")
    x_tau, x_next = torch.randn(16, generator=g).double(), torch.randn(16, generator=g).double()
    d1, d2 = torch.randn(16, generator=g).double(), torch.randn(16, generator=g).double()
    mu_q = k["q_tau"] * x_tau + k["q_x"] * x_next
    q = Normal(mu_q, math.sqrt(k["var_q"]))
    kls, quads = [], []
    for d in (d1, d2):
        mu_p = k["p_x0"] * d + k["p_x"] * x_next
        kls.append(kl_divergence(q, Normal(mu_p, math.sqrt(k["var_p"]))).sum())
        quads.append(((mu_p - mu_q) ** 2).sum())
    assert float(kls[0] - kls[1]) == pytest.approx(w * float(quads[0] - quads[1]), rel=1e-9)
    # The first pair: q is a point mass at x_tau; the term is -log N(x_tau; mu_p, var_p).
    k0 = ep_coefficients(s_tau, s_next, s_tau)
    w0 = ep_weight(s_tau, s_next, s_tau, "elbo")
    assert k0["var_q"] == 0 and k0["q_tau"] == pytest.approx(1.0) and k0["q_x"] == 0
    nll = [-Normal(k0["p_x0"] * d + k0["p_x"] * x_next, math.sqrt(k0["var_p"]))
           .log_prob(x_tau).sum() for d in (d1, d2)]
    quad0 = [((k0["p_x0"] * d + k0["p_x"] * x_next - x_tau) ** 2).sum() for d in (d1, d2)]
    assert float(nll[0] - nll[1]) == pytest.approx(w0 * float(quad0[0] - quad0[1]), rel=1e-9)


def test_paper_weights_are_the_spec_formula_and_singular_at_sigma_tau():
    s_prev, s_next, s_tau = 0.62, 0.75, 0.5
    pdf = math.exp(-((math.log(s_prev) + 1.2) ** 2) / (2 * 1.2 ** 2)) / (
        s_prev * 1.2 * math.sqrt(2 * math.pi))
    lam = (s_prev ** 2 + 0.25) / (s_prev * 0.5) ** 2
    ds = s_next - s_prev
    spec = (lam * pdf * ds * s_next ** 2 * (s_next ** 2 - s_tau ** 2)
            / (4 * ds ** 2 * (s_prev ** 2 - s_tau ** 2)))
    assert ep_weight(s_prev, s_next, s_tau, "paper") == pytest.approx(spec, rel=1e-12)
    assert ap_weight(s_prev, s_next, "paper") == pytest.approx(
        edm_lambda(s_next) * lognormal_pdf(s_next) * ds, rel=1e-12)
    with pytest.raises(ConfigError, match="singular"):
        ep_weight(s_tau, s_next, s_tau, "paper")
    with pytest.raises(ConfigError, match="skip >= 1"):
        Problem(n=2).classifier(variant="ep", weights="paper", skip=0)
    # With sigma_tau = 0 the EPNDC term is the EDM diffusion classifier's x0 term, to first order.
    for gap in (1e-2, 1e-3):
        k = ep_coefficients(1.0, 1.0 + gap, 0.0)
        ratio = ep_weight(1.0, 1.0 + gap, 0.0, "paper") * k["p_x0"] ** 2 / (
            edm_lambda(1.0) * lognormal_pdf(1.0) * gap)
        assert ratio == pytest.approx(1.0, abs=1.5 * gap)


@pytest.mark.parametrize("variant", ["ep", "ap"])
def test_forward_matches_a_hand_computation(variant):
    prob = Problem(n=5)
    clf = prob.classifier(variant=variant, weights="elbo", skip=0, grid=3)
    clf.begin_phase(3, 7, PHASE_SELECT)
    with torch.inference_mode():
        logits = clf(prob.inputs).double()
    clf.begin_phase(3, 7, PHASE_SELECT)
    eps = clf.draw(5, torch.device("cpu")).double()
    x_tau = prob.inputs.double() * 2 - 1
    base = x_tau if variant == "ep" else prob.denoiser()(prob.inputs).double() * 2 - 1
    net, abar = GaussCond(prob.means, prob.s), linear_abar()
    losses = torch.zeros(5, prob.k, dtype=torch.float64)
    raw = []
    for j, (t, s_prev) in enumerate(zip(clf.timesteps, clf.prev_levels, strict=True)):
        a = float(abar[t])
        s = math.sqrt((1 - a) / a)
        assert s == pytest.approx(clf.levels[j])
        k = ep_coefficients(s_prev, s, 2 * prob.sigma)
        w = ep_weight(s_prev, s, 2 * prob.sigma, "elbo") if variant == "ep" else \
            ap_weight(s_prev, s, "elbo")
        raw.append(w)
        x_j = base + (k["noise"] if variant == "ep" else s) * eps[:, j]
        for y in range(prob.k):
            labels = torch.full((5,), y)
            d = x_j - s * net(x_j * math.sqrt(a), torch.full((5,), t), labels).double()
            if variant == "ep":
                diff = (k["p_x0"] * d + k["p_x"] * x_j) - (k["q_tau"] * x_tau + k["q_x"] * x_j)
            else:
                diff = d - base
            losses[:, y] += w * diff.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(logits, -losses / sum(raw), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# (c) VP <-> VE


def test_vp_ve_mapping_round_trips_and_d_is_the_exact_posterior_mean():
    abar = linear_abar()
    s = sigma_ve(abar)
    torch.testing.assert_close(abar_from_sigma(s), abar, rtol=1e-12, atol=0)
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    for t in (0, 145, 999):
        a = float(abar[t])
        torch.testing.assert_close(ve_to_vp(vp_to_ve(x, a), a), x)
        # x_VP = sqrt(a) x0 + sqrt(1 - a) eps  <=>  x_VE = x0 + sigma_VE eps
        x0, eps = torch.randn_like(x), torch.randn_like(x)
        torch.testing.assert_close(vp_to_ve(math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, a),
                                   x0 + float(s[t]) * eps)
    # D(x_VE; sigma, y) from the eps network is E[x0 | x_VE, y] = m + s^2/(s^2+sigma^2)(x - m).
    prob = Problem(n=4)
    clf = prob.classifier(grid=5, skip=1)
    x_ve = torch.randn(4, *prob.shape)
    labels = torch.tensor([0, 1, 2, 1])
    for j in range(len(clf.levels)):
        sig = clf.levels[j]
        d = clf.denoise(x_ve, torch.full((4,), j), labels).double()
        m = prob.means[labels]
        exact = m + prob.s ** 2 / (prob.s ** 2 + sig ** 2) * (x_ve.double() - m)
        torch.testing.assert_close(d, exact, rtol=1e-4, atol=1e-5)


def test_grid_starts_above_two_sigma_and_rounds_up_to_timesteps():
    abar = linear_abar()
    s = sigma_ve(abar)
    steps, levels = grid_timesteps(abar, 0.5, 10, skip=2, max_noise=3.0)
    targets = np.linspace(0.5, 3.0, 13)[1:]
    assert len(steps) == 12 and steps == sorted(set(steps))
    for t, v, target in zip(steps, levels, targets, strict=True):
        assert float(s[t - 1]) < target <= v == float(s[t])
    clf = Problem(n=2).classifier(grid=10, skip=2)
    assert clf.timesteps == steps[2:] and clf.prev_levels[0] == levels[1]
    assert clf.describe()["timesteps"] == steps[2:]
    with pytest.raises(ConfigError, match="finer than"):
        grid_timesteps(abar, 0.5, 900)


# ----------------------------------------------------------------------------------------------
# (d) randomness: fixed in advance, independent of the harness noise, batch/resume invariant


def test_same_seed_index_phase_gives_the_same_outputs_whatever_the_split():
    prob = Problem(n=12)
    clf = prob.classifier(grid=6)
    with torch.inference_mode():
        clf.begin_phase(5, 3, PHASE_ESTIMATE)
        whole = clf(prob.inputs)
        clf.begin_phase(5, 3, PHASE_ESTIMATE)
        parts = torch.cat([clf(prob.inputs[:1]), clf(prob.inputs[1:8]), clf(prob.inputs[8:])])
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
        # Another image index or phase: other draws.
        clf.begin_phase(5, 4, PHASE_ESTIMATE)
        assert not torch.allclose(clf(prob.inputs), whole)


def test_classifier_noise_is_fixed_in_advance_and_not_the_harness_noise():
    prob = Problem(n=6)
    clf = prob.classifier(grid=4)
    clf.begin_phase(0, 2, PHASE_SELECT)
    first = clf.draw(6, torch.device("cpu")).clone()
    # The draws depend on (seed, index, phase) only: not on the inputs or on what came before.
    with torch.inference_mode():
        clf.begin_phase(0, 2, PHASE_SELECT)
        a = clf(prob.inputs)
        clf.begin_phase(0, 2, PHASE_SELECT)
        b = clf(torch.cat([prob.inputs[:1], torch.rand(5, *prob.shape)]))
    torch.testing.assert_close(a[:1], b[:1])  # other rows' harness noise changes nothing
    clf.begin_phase(0, 2, PHASE_SELECT)
    torch.testing.assert_close(clf.draw(6, torch.device("cpu")), first)
    expected = NoiseStream((4, *prob.shape), "cpu", 0, 2, PHASE_NDC + PHASE_SELECT)
    torch.testing.assert_close(first, expected.fill(torch.empty(6, 4, *prob.shape)))
    # Distinct from the harness's delta stream of the same (seed, index, phase).
    harness = NoiseStream(prob.shape, "cpu", 0, 2, PHASE_SELECT).fill(torch.empty(6, *prob.shape))
    assert not torch.allclose(first[:, 0], harness)
    # noise_seed moves the stream.
    other = prob.classifier(grid=4, noise_seed=1)
    other.begin_phase(0, 2, PHASE_SELECT)
    assert not torch.allclose(other.draw(6, torch.device("cpu")), first)


def test_no_sample_of_the_classifier_noise_is_a_harness_draw():
    """Every eps the classifier draws in every phase of an image, against every delta the
    harness draws for that image (all its phases, as many samples as the classifier's grid
    holds levels per sample): no vector may repeat. A stream phase equal to the harness's would
    make sample i's eps the delta of samples 4i..4i+3 (grid 4), not only sample 0's."""
    prob = Problem(n=1)
    grid, n, seed, index = 4, 64, 3, 5
    clf = prob.classifier(grid=grid)
    eps, deltas = [], []
    for phase in (PHASE_SELECT, PHASE_ESTIMATE, PHASE_PREDICT):
        clf.begin_phase(seed, index, phase)
        eps.append(clf.draw(n, torch.device("cpu")).reshape(n * grid, -1))
        harness = NoiseStream(prob.shape, "cpu", seed, index, phase)
        deltas.append(harness.fill(torch.empty(n * grid, *prob.shape)).reshape(n * grid, -1))
    closest = torch.cdist(torch.cat(eps).double(), torch.cat(deltas).double()).min()
    assert closest > 0.1, f"an eps of the classifier repeats a harness draw ({closest:.2g})"


def test_estimation_draws_do_not_depend_on_how_many_selection_draws_were_used():
    prob = Problem(n=10)
    clf = prob.classifier(grid=4)
    outs = []
    with torch.inference_mode():
        for n0 in (2, 9):
            clf.begin_phase(1, 0, PHASE_SELECT)
            clf(prob.inputs[:n0])
            clf.begin_phase(1, 0, PHASE_ESTIMATE)
            outs.append(clf(prob.inputs))
    torch.testing.assert_close(outs[0], outs[1])


# ----------------------------------------------------------------------------------------------
# (e) sift-and-refine


def test_sift_and_refine_agrees_with_full_scoring_with_fewer_passes():
    prob = Problem(k=50, shape=(1, 4, 4), s=0.2, n=24, scale=0.9, seed=1)
    full = prob.classifier(grid=12, sift_keep=50)
    sift = prob.classifier(grid=12, sift_keep=5, sift_grid=4, sift_margin=0.02)
    assert not full.sifting and sift.sifting
    with torch.inference_mode():
        full.begin_phase(0, 1, PHASE_SELECT)
        sift.begin_phase(0, 1, PHASE_SELECT)
        lf, ls = full(prob.inputs), sift(prob.inputs)
    assert torch.equal(lf.argmax(1), ls.argmax(1))
    assert bool(torch.isfinite(ls).all())
    assert sift.passes < 0.5 * full.passes == 0.5 * 24 * 50 * 12
    assert sift.passes <= 24 * sift.cost.diffusion_passes
    # Survivors' logits are exactly full scoring's (same draws, reused sift terms).
    top = ls.argmax(1, keepdim=True)
    torch.testing.assert_close(ls.gather(1, top), lf.gather(1, top), rtol=1e-5, atol=1e-7)
    assert sift.cost.diffusion_passes == 50 * 4 + 5 * 8
    assert sift.describe()["sift"]["levels"] == [0, 4, 7, 11]


# ----------------------------------------------------------------------------------------------
# (f) through the harness: batch invariance, cost


def test_smooth_counts_are_batch_invariant_and_passes_are_counted():
    prob = Problem(n=1)
    x = prob.inputs[0]
    clf = prob.classifier(variant="ap", grid=5, weights="paper", skip=0)
    assert clf.cost.diffusion_passes == 3 * 5 + 1 and clf.cost.classifier_passes == 0
    certs = [Smooth(clf, 3, prob.sigma).certify_record(x, 10, 60, 0.001, bs, seed=2, index=4)
             for bs in (7, 64)]
    assert certs[0].counts_select == certs[1].counts_select
    assert certs[0].counts_estimate == certs[1].counts_estimate
    assert certs[0].diffusion_passes == 70 * 16 and certs[0].classifier_passes == 0


def test_an_apndc_without_denoiser_or_a_bad_variant_is_a_config_error():
    prob = Problem(n=1)
    with pytest.raises(ConfigError, match="denoiser"):
        NoisedDiffusionClassifier(prob.conditional(), 3, shape=prob.shape, sigma=0.25,
                                  variant="ap")
    with pytest.raises(ConfigError, match="variant"):
        prob.classifier(variant="xp")


def test_feasibility_estimate_extrapolates_the_timing_and_warns_over_a_threshold():
    from types import SimpleNamespace

    from bench.certify.budget import Budget
    from bench.running.feasibility import estimate, warning

    prob = Problem(n=1)
    clf = prob.classifier(grid=5)
    proc = SimpleNamespace(base=clf, budget=Budget(n0=10, n=90),
                           spec=SimpleNamespace(sigma=prob.sigma))
    est = estimate(proc, prob.inputs[0], 7, samples=4)
    assert est.samples_per_image == 100 and est.images == 7 and est.timed_samples == 4
    assert est.diffusion_passes_per_image == 100 * 15 and est.classifier_passes_per_image == 0
    assert est.seconds_per_image == pytest.approx(100 * est.seconds_per_sample)
    assert est.seconds_total == pytest.approx(7 * est.seconds_per_image)
    assert warning(est, threshold_s=1e9) is None
    line = warning(est, threshold_s=0.0)
    assert line.startswith("warning: estimated") and "for 7 images" in line and "\n" not in line
    assert "1.5e+03 diffusion passes per image" in line
    assert warning(est, 1e9, per_image_threshold_s=0.0) is not None
    bare = estimate(clf, prob.inputs[0], 2, samples=2, n0=1, n=9, sigma=0.25)
    assert bare.samples_per_image == 10


# ----------------------------------------------------------------------------------------------
# CLI and trainer


@pytest.fixture
def toy_ndc_registry(tmp_path, monkeypatch):
    (tmp_path / "ndc_toy_models.py").write_text(TOY_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = tmp_path / "ndc_toy.yaml"
    reg.write_text(
        "models:\n"
        "  toy-cond: {source: python, path: 'ndc_toy_models:GaussCond'}\n"
        "  toy-mix: {source: python, path: 'ndc_toy_models:GaussMix'}\n"
        "methods:\n"
        "  ndc-toy:\n"
        "    adapter: methods.ndc:NDC\n"
        "    params: {grid: 4}\n"
        "    datasets:\n"
        "      digits: {conditional: toy-cond, denoiser: toy-mix}\n")
    return reg


@pytest.mark.parametrize(("variant", "passes"), [("ep", 40), ("ap", 41)])
def test_cli_run_records_the_grid_and_the_unet_passes(cli, tmp_path, toy_ndc_registry, variant,
                                                      passes):
    code, out, err = cli("run", "--method", "ndc-toy", "--dataset", "digits", "--subset", "dev",
                         "--n", "20", "--n0", "5", "--max-images", "2", "--quiet",
                         "--results", tmp_path / "res", "--extra-registry", toy_ndc_registry,
                         "--param", f"variant={variant}")
    assert code == 0, err
    summary = json.loads(next(Path(tmp_path / "res").rglob("summary.json")).read_text())
    assert summary["cost_per_sample"] == {"classifier_passes": 0, "diffusion_passes": passes}
    described = summary["base_classifier"]
    assert described["unet_passes_per_call"] == passes and described["grid"] == 4
    assert described["timesteps"][0] > 145  # above the t* of sigma 0.25
    assert f"{25 * passes} diffusion passes" in out.replace(",", "")


def test_the_card_lists_every_stream_an_ndc_run_draws_from(cli, tmp_path, toy_ndc_registry,
                                                            monkeypatch):
    """The harness's phases 0 and 1, the classifier's own eps streams 12 and 13, and the one
    the model probe draws from before certifying: every stream created during the run is on
    the card."""
    seen: set[int] = set()
    init = NoiseStream.__init__

    def spy(self, shape, device, seed, index, phase):
        seen.add(int(phase))
        init(self, shape, device, seed, index, phase)

    monkeypatch.setattr(NoiseStream, "__init__", spy)
    code, out, err = cli("run", "--method", "ndc-toy", "--dataset", "digits", "--subset", "dev",
                         "--n", "8", "--n0", "4", "--max-images", "1", "--quiet",
                         "--results", tmp_path / "res", "--extra-registry", toy_ndc_registry)
    assert code == 0, err
    summary = json.loads(next(Path(tmp_path / "res").rglob("summary.json")).read_text())
    streams = summary["procedure"]["noise_streams"]
    probe = PHASE_NDC + PROBE_PHASE
    assert [s["phase"] for s in streams] == [0, 1, PHASE_NDC, PHASE_NDC + 1, probe]
    assert "noise_seed 0" in streams[2]["seed"] and "NDC eps" in streams[2]["draws"]
    assert "model probe" in streams[4]["draws"]
    assert seen == {0, 1, PHASE_NDC, PHASE_NDC + 1, probe}


@pytest.mark.skipif(not (ZOO_DIR / "digits-ddpm-cond").is_dir(), reason="not trained")
def test_cli_run_with_the_shipped_conditional_model(cli, tmp_path):
    for variant in ("ep", "ap"):
        code, out, err = cli("run", "--method", "ndc", "--dataset", "digits", "--subset", "dev",
                             "--n", "20", "--n0", "5", "--max-images", "2", "--quiet",
                             "--results", tmp_path / variant,
                             "--param", f"variant={variant}", "--param", "grid=5")
        assert code == 0, err


def test_an_expensive_run_is_announced_before_it_starts(cli, tmp_path, toy_ndc_registry,
                                                       monkeypatch):
    """The runner times a few samples first and warns on stderr with the time per image and
    in total (here with a zero threshold; the real ones are an hour in all or 5 min/image)."""
    import bench.running.runner

    args = ("run", "--method", "ndc-toy", "--dataset", "digits", "--subset", "dev", "--n", "20",
            "--n0", "5", "--max-images", "2", "--quiet", "--extra-registry", toy_ndc_registry)
    code, out, err = cli(*args, "--results", tmp_path / "quiet")
    assert code == 0 and "warning" not in err, err
    monkeypatch.setattr(bench.running.runner, "WARN_IMAGE_S", 0.0)
    code, out, err = cli(*args, "--results", tmp_path / "warned")
    assert code == 0, err
    assert "warning: estimated" in err and "per image and" in err and "for 2 images" in err
    assert "diffusion passes per image" in err
    # The timing draws its own noise: the certificates are those of the unwarned run.
    a, b = ((tmp_path / d).rglob("certs.tsv") for d in ("quiet", "warned"))
    cut = [[line.split("\t")[:5] for line in next(f).read_text().splitlines()] for f in (a, b)]
    assert cut[0] == cut[1]


def _tiny_ctx(out_dir, epochs=2):
    from bench.contract import TrainContext
    from bench.data.specs import spec

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.arange(20) % 10
    return TrainContext(dataset=spec("digits").info, sigma=0.25, device=torch.device("cpu"),
                        seed=3, train=(x, y), test=(x[:6], y[:6]), out_dir=out_dir,
                        name="tiny-cond", options={"epochs": epochs, "batch": 8},
                        progress=False)


def test_conditional_training_is_resumable_and_bit_for_bit(tmp_path, monkeypatch):
    from bench.nets.loaders import load_network
    from bench.training.conditional_ddpm import train_conditional_ddpm

    straight = train_conditional_ddpm(_tiny_ctx(tmp_path / "a"))
    again = train_conditional_ddpm(_tiny_ctx(tmp_path / "b"))
    assert straight["sha256"] == again["sha256"]
    # Interrupted while saving the second epoch's checkpoint, then resumed.
    real_save, calls = torch.save, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train_conditional_ddpm(_tiny_ctx(tmp_path / "c"))
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "c" / "tiny-cond.partial" / "checkpoint.pt").is_file()
    resumed = train_conditional_ddpm(_tiny_ctx(tmp_path / "c"))
    assert resumed["sha256"] == straight["sha256"]
    assert resumed["conditional"] and resumed["num_classes"] == 10
    assert set(resumed["label_check"]) >= {"eps_mse_true_label", "eps_mse_wrong_label"}
    card = json.loads((tmp_path / "c" / "tiny-cond" / "card.json").read_text())
    assert card["method"] == "ndc" and card["epochs"] == 2
    model = load_network("tiny-cond", {"source": "diffusers", "path": resumed["weights"],
                                       "sha256": resumed["sha256"]},
                         dataset=spec_info(), base_dir=tmp_path)
    clf = NoisedDiffusionClassifier(model, 10, shape=(1, 8, 8), sigma=0.25, grid=3)
    with torch.inference_mode():
        assert clf(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def spec_info():
    from bench.data.specs import spec

    return spec("digits").info
