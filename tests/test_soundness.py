"""Soundness of the certificates: tests that a wrong CERTIFY, PREDICT or SmoothAdv step fails.

Three kinds of test live here.

* Coverage with near-tied classes: a base classifier whose class probabilities are known
  exactly (argmax of K equal noisy coordinates: every class has p = 1/K by symmetry), so that
  the class CERTIFY selects is a coin toss and choosing it from the estimation counts (the
  "winner's curse") inflates the bound far beyond alpha.
* Recording base classifiers and networks: they keep every input they see, so the tests can
  check which noise each phase used, bit for bit.
* Scripted base classifiers: they return a fixed sequence of labels (the first n0 go to
  selection, the next n to estimation), so every decision rule of CERTIFY and PREDICT can be
  pinned at its boundary, deterministically.

Statistical tolerances are derived in the comments; every random test is seeded, and a
correct implementation would fail it with probability below 1e-4 (so, seeded, never).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from bench import Smooth
from bench.certify import stats
from bench.certify.noise import PHASE_ESTIMATE, PHASE_PREDICT, PHASE_SELECT, NoiseStream
from bench.training.attacks import EpsilonWarmup, smoothadv_ddn, smoothadv_pgd
from methods.smoothadv import smoothadv_loss

K = 10
SHAPE = (1, 1, K)  # one (C, H, W) "image" of K coordinates


def argmax_of_noise(batch: torch.Tensor) -> torch.Tensor:
    """f(x + delta) = argmax of the K coordinates: with x constant, p_c = 1/K for every c."""
    return batch.flatten(1)[:, :K].argmax(1)


class Recording:
    """A label-returning base classifier that keeps a copy of every batch it is given."""

    def __init__(self, classify=argmax_of_noise):
        self.classify = classify
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.clone())
        return self.classify(batch)

    def inputs(self) -> torch.Tensor:
        return torch.cat(self.batches)


class Scripted:
    """Returns the next labels of a fixed script, whatever the input: with CERTIFY's order
    (n0 selection samples, then n estimation samples) the script sets both histograms."""

    def __init__(self, *runs: tuple[int, int]):
        self.labels = torch.cat([torch.full((count,), label) for label, count in runs])
        self.pos = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        out = self.labels[self.pos : self.pos + b]
        assert out.shape[0] == b, "the script ran out: more samples drawn than n0 + n"
        self.pos += b
        return out


def certify(script: Scripted, n0: int, n: int, alpha: float = 0.001, sigma: float = 0.5,
            batch: int = 64):
    cert = Smooth(script, K, sigma).certify_record(torch.full(SHAPE, 0.5), n0, n, alpha, batch)
    assert script.pos == n0 + n  # every scripted label was used, none twice
    return cert


def upper_tail(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) >= k), summed by hand from math.comb (independent of scipy; n <= 1000
    keeps comb(n, j) within float range)."""
    return math.fsum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def phi(z: float) -> float:
    """The standard normal CDF from math.erf (independent of scipy's norm)."""
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ----- (a) the class is selected from the selection counts only ---------------------------------

def test_bound_covers_the_selected_class_with_ten_tied_classes():
    """P(p_lower > p_true(selected class)) <= alpha, where selection is a pure coin toss.

    With K = 10 classes of probability exactly 1/10, a correct CERTIFY selects its class from
    samples independent of the estimation counts, so count ~ Bin(n, 1/10) and the one-sided CP
    bound exceeds 1/10 with probability q <= alpha (exactly q = 0.0399 at n = 100, alpha = 0.05;
    checked below). Across T = 1000 independent images (seeds (123, i)) the number of
    violations V is then stochastically below Bin(1000, 0.05) (mean 50, sd 6.9); the test
    allows V <= binom.ppf(1 - 1e-4, 1000, 0.05) = 77, which a correct implementation exceeds
    with probability < 1e-4. Picking the class from the estimation counts instead bounds the
    largest of ten Bin(100, 1/10) counts: that violates with probability ~0.36 (V ~ 360), and
    the same records show it below (the test has power).
    """
    sigma, alpha, n0, n, trials = 1.0, 0.05, 10, 100, 1000
    p_true = 1 / K
    ks = np.arange(n + 1)
    bounds = np.array([stats.cp_lower(int(k), n, alpha) for k in ks])
    q = binom.pmf(ks[bounds > p_true], n, p_true).sum()
    assert q <= alpha  # exact per-image violation probability of a correct CERTIFY
    limit = binom.ppf(1 - 1e-4, trials, alpha)
    assert limit == 77

    smooth = Smooth(argmax_of_noise, K, sigma)
    x = torch.full(SHAPE, 0.5)
    violations = winners_curse = 0
    selected = np.zeros(K, dtype=int)
    for i in range(trials):
        cert = smooth.certify_record(x, n0, n, alpha, 128, seed=123, index=i)
        assert cert.top_class == int(np.argmax(cert.counts_select))
        selected[cert.top_class] += 1
        violations += cert.p_lower > p_true
        winners_curse += bounds[max(cert.counts_estimate)] > p_true  # the (a) mutant's bound
    assert violations <= limit, f"{violations} of {trials} bounds exceed p = 1/K (limit {limit})"
    assert winners_curse > 3 * limit  # an estimation-count selection fails with huge margin
    assert (selected > 0).all()  # selection really is spread over the tied classes


# ----- (b) selection and estimation use disjoint, fixed noise streams ----------------------------

def test_selection_and_estimation_see_disjoint_noise_from_their_own_streams():
    sigma, n0, n, batch = 0.5, 50, 300, 64
    x = torch.full(SHAPE, 0.5)
    rec = Recording()
    cert = Smooth(rec, K, sigma).certify_record(x, n0, n, 0.001, batch, seed=9, index=4)
    seen = rec.inputs()
    assert seen.shape == (n0 + n, *SHAPE)
    select, estimate = seen[:n0], seen[n0:]
    # Disjoint: no selection sample equals any estimation sample (nor is a sample repeated).
    flat_s, flat_e = select.flatten(1), estimate.flatten(1)
    same = (flat_s[:, None, :] == flat_e[None, :, :]).all(-1)
    assert not same.any(), "estimation reused a selection sample"
    assert torch.unique(seen.flatten(1), dim=0).shape[0] == n0 + n
    # Each phase is x + sigma * (its own stream), reproduced independently, bit for bit.
    for phase, got in ((PHASE_SELECT, select), (PHASE_ESTIMATE, estimate)):
        noise = NoiseStream(SHAPE, "cpu", 9, 4, phase).fill(torch.empty(got.shape))
        assert torch.equal(got, torch.add(x, noise, alpha=sigma)), phase
    # And the histograms are those of exactly these samples.
    assert cert.counts_select == torch.bincount(argmax_of_noise(select), minlength=K).tolist()
    assert cert.counts_estimate == torch.bincount(argmax_of_noise(estimate),
                                                  minlength=K).tolist()


@pytest.mark.parametrize("n0", [1, 37, 100, 1000])
def test_estimation_is_a_function_of_the_estimation_stream_alone(n0):
    """Changing N0 (or the batch size) leaves the estimation inputs unchanged, bit for bit."""
    x = torch.full(SHAPE, 0.5)
    reference = Recording()
    ref = Smooth(reference, K, 0.5).certify_record(x, 10, 500, 0.001, 100, seed=2, index=1)
    rec = Recording()
    cert = Smooth(rec, K, 0.5).certify_record(x, n0, 500, 0.001, 33, seed=2, index=1)
    assert torch.equal(rec.inputs()[n0:], reference.inputs()[10:])
    assert cert.counts_estimate == ref.counts_estimate


def test_predict_uses_its_own_stream_only():
    """PREDICT draws n samples from the prediction stream, none from selection or estimation."""
    x = torch.full(SHAPE, 0.5)
    rec = Recording()
    Smooth(rec, K, 0.5).predict(x, 200, 0.001, 64, seed=5, index=3)
    noise = NoiseStream(SHAPE, "cpu", 5, 3, PHASE_PREDICT).fill(torch.empty(200, *SHAPE))
    assert torch.equal(rec.inputs(), torch.add(x, noise, alpha=0.5))


# ----- (c) SmoothAdv trains on the noise its attack used ----------------------------------------

class RecordingNet(torch.nn.Module):
    """A tiny linear net that keeps a copy of every input batch of its forward."""

    def __init__(self, d: int, k: int = 3):
        super().__init__()
        self.lin = torch.nn.Linear(d, k)
        self.inputs: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.detach().clone())
        return self.lin(z.flatten(1))


@pytest.mark.parametrize("attack", [smoothadv_pgd, smoothadv_ddn])
@pytest.mark.parametrize("multi_noise", [True, False])
def test_smoothadv_step_reuses_the_attack_noise(attack, multi_noise):
    """The training forward sees x_adv + delta_i with the attack's own delta_i (all m of them
    with multi_noise, else the first), not fresh draws. The attack's first forward is at
    delta = 0, so it shows the draws the attack used: x + delta_i."""
    torch.manual_seed(0)
    b, m, sigma, steps = 4, 3, 0.5, 3
    net = RecordingNet(16)
    xb = torch.rand(b, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    yb = torch.tensor([0, 1, 2, 0])
    spy = {}

    def spied(net_, x, y, noise, **kwargs):
        spy["noise"] = noise.clone()
        spy["adv"] = attack(net_, x, y, noise, **kwargs)
        return spy["adv"]

    loss_fn = smoothadv_loss(sigma, m, steps, multi_noise, EpsilonWarmup(0.5, 0), spied, {})
    loss = loss_fn(net, xb, yb, torch.Generator().manual_seed(7))
    assert torch.isfinite(loss)
    assert len(net.inputs) == steps + 1  # T attack forwards, then the training forward
    noise = spy["noise"]
    assert noise.shape == (b, m, 1, 4, 4)
    # The attack's forwards used exactly the draws it was given...
    first = net.inputs[0].view(b, m, 1, 4, 4)
    assert torch.equal(first, xb.unsqueeze(1) + noise)
    assert noise.std() > 0.3  # real N(0, sigma^2) draws, so fresh ones could not match
    # ... and the training forward uses the same draws on x_adv.
    used = noise if multi_noise else noise[:, :1]
    train = net.inputs[-1].view(b, used.shape[1], 1, 4, 4)
    assert torch.equal(train, spy["adv"].unsqueeze(1) + used)
    # Recovered from the inputs alone (no spy): train - x_adv == first - x, up to rounding.
    recovered = train - spy["adv"].unsqueeze(1)
    attack_noise = (first - xb.unsqueeze(1))[:, : used.shape[1]]
    assert torch.allclose(recovered, attack_noise, atol=1e-6)


# ----- CERTIFY's decision rules, each at its boundary ------------------------------------------

def test_selected_class_is_the_selection_argmax_ties_to_the_lowest_index():
    # Selection ties classes 3 and 1 (5 votes each); numpy's argmax picks the lower index, 1.
    # Estimation is all class 1, so a rule picking 3 (the last or the first-seen of the tied
    # classes) would abstain with count 0; the right rule certifies 1.
    cert = certify(Scripted((3, 5), (1, 5), (1, 200)), 10, 200)
    assert cert.counts_select[1] == cert.counts_select[3] == 5
    assert cert.top_class == 1 and cert.prediction == 1 and cert.count == 200


def test_selected_class_comes_from_selection_not_estimation_counts():
    # Selection says 2 (6 of 10); estimation is 100% class 5. Correct: top 2, count 0, abstain.
    cert = certify(Scripted((2, 6), (5, 4), (5, 500)), 10, 500)
    assert cert.top_class == 2 and cert.count == 0
    assert cert.prediction == Smooth.ABSTAIN and cert.radius == 0.0 and cert.p_lower == 0.0


def test_count_is_the_estimation_count_of_the_selected_class():
    # Selection picks 2; estimation gives class 5 700 votes and class 2 300: bound on 300.
    n = 1000
    cert = certify(Scripted((2, 10), (5, 700), (2, 300)), 10, n)
    assert cert.counts_estimate[5] == 700 and cert.counts_estimate[2] == 300
    assert cert.top_class == 2 and cert.count == 300
    assert cert.p_lower == stats.cp_lower(300, n, 0.001)
    assert cert.prediction == Smooth.ABSTAIN  # the max count (700) would certify class 2


def test_selection_votes_are_not_counted_in_the_estimate():
    # 100 selection votes for class 4 must not enter the estimation histogram or the bound.
    n0, n = 100, 400
    cert = certify(Scripted((4, n0), (4, 190), (6, 210)), n0, n)
    assert sum(cert.counts_select) == n0 and sum(cert.counts_estimate) == n
    assert cert.count == 190 and cert.counts_estimate[4] == 190
    assert cert.p_lower == stats.cp_lower(190, n, 0.001)
    assert cert.prediction == Smooth.ABSTAIN  # 290 / 500 would certify


def test_bound_uses_the_estimation_n_not_n0_plus_n():
    n0, n, alpha = 400, 600, 0.001
    cert = certify(Scripted((0, n0), (0, 580), (1, 20)), n0, n, alpha)
    assert cert.n == n and cert.count == 580
    assert cert.p_lower == stats.cp_lower(580, n, alpha)
    assert cert.p_lower != pytest.approx(stats.cp_lower(580, n0 + n, alpha), abs=1e-3)
    assert phi(cert.radius / 0.5) == pytest.approx(cert.p_lower, rel=1e-12)


def _first_certified_count(n: int, alpha: float) -> int:
    """Smallest k with cp_lower(k, n, alpha) >= 1/2, found from the hand-summed tail:
    cp_lower(k) >= 1/2 iff P(Bin(n, 1/2) >= k) <= alpha (the CP bound's defining property)."""
    return next(k for k in range(n // 2, n + 1) if upper_tail(k, n, 0.5) <= alpha)


@pytest.mark.parametrize("n,alpha", [(100, 0.001), (100, 0.05), (1000, 0.01)])
def test_abstain_boundary_of_the_count(n, alpha):
    """The count k* at which CERTIFY stops abstaining is where the one-sided binomial test of
    p <= 1/2 rejects at level alpha (not alpha / 2): k* - 1 abstains, k* certifies."""
    k_star = _first_certified_count(n, alpha)
    below = certify(Scripted((7, 5), (7, k_star - 1), (8, n - k_star + 1)), 5, n, alpha)
    at = certify(Scripted((7, 5), (7, k_star), (8, n - k_star)), 5, n, alpha)
    assert below.prediction == Smooth.ABSTAIN and below.radius == 0.0
    assert at.prediction == 7 and at.radius >= 0.0
    assert below.p_lower < 0.5 <= at.p_lower
    # An alpha / 2 (two-sided) bound would still abstain at k* for these (n, alpha):
    assert stats.cp_lower(k_star, n, alpha / 2) < 0.5


def test_bound_of_exactly_one_half_certifies_radius_zero(monkeypatch):
    """certify_decision abstains iff p_lower < 1/2: exactly 1/2 certifies with radius 0."""
    for value, expected in ((0.5, (3, 0.0, 0.5)),
                            (math.nextafter(0.5, 0), (stats.ABSTAIN, 0.0, None))):
        monkeypatch.setattr(stats, "cp_lower", lambda k, n, a, v=value: v)
        pred, radius, p_lower = stats.certify_decision(3, 50, 100, 0.001, 0.5)
        assert (pred, radius) == expected[:2] and p_lower == value
    monkeypatch.setattr(stats, "cp_lower", lambda k, n, a: math.nextafter(0.5, 1))
    pred, radius, _ = stats.certify_decision(3, 50, 100, 0.001, 0.5)
    assert pred == 3 and 0 < radius < 1e-12
    assert stats.radius_from_bound(0.5, 1.0) == 0.0


@pytest.mark.parametrize("k,n", [(1, 20), (7, 20), (19, 20), (20, 20), (30, 50), (45, 50)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_cp_lower_is_the_one_sided_level_alpha_bound(k, n, alpha):
    """The CP lower bound p solves P_p(Bin(n, p) >= k) = alpha (summed by hand): one-sided at
    alpha. An alpha / 2 bound gives a tail of alpha / 2, a 1 - alpha one a tail of 1 - alpha."""
    p = stats.cp_lower(k, n, alpha)
    assert upper_tail(k, n, p) == pytest.approx(alpha, rel=1e-9)


def test_cp_lower_at_zero_and_all_successes():
    assert stats.cp_lower(0, 37, 0.01) == 0.0  # no success: nothing can be bounded away from 0
    for n in (1, 2, 37, 1000):  # k = n: p^n = alpha
        assert stats.cp_lower(n, n, 0.01) == pytest.approx(0.01 ** (1 / n), rel=1e-12)
    assert stats.cp_upper(37, 37, 0.01) == 1.0
    assert stats.cp_upper(0, 37, 0.01) == pytest.approx(1 - 0.01 ** (1 / 37), rel=1e-9)


@pytest.mark.parametrize("sigma", [0.12, 0.5, 1.0])
def test_radius_is_sigma_times_phi_inverse_of_the_bound(sigma):
    cert = certify(Scripted((0, 3), (0, 990), (1, 10)), 3, 1000, sigma=sigma)
    assert cert.prediction == 0 and cert.p_lower == stats.cp_lower(990, 1000, 0.001)
    assert phi(cert.radius / sigma) == pytest.approx(cert.p_lower, rel=1e-12)
    for p in (0.5, 0.6, 0.9, 0.999):
        assert phi(stats.radius_from_bound(p, sigma) / sigma) == pytest.approx(p, rel=1e-12)


# ----- PREDICT's decision rules ------------------------------------------------------------------

def two_sided_p(n1: int, n2: int) -> float:
    """Exact two-sided binomial p-value of n1 vs n2 at p = 1/2 (n1 >= n2), by hand."""
    return min(1.0, 2 * upper_tail(n1, n1 + n2, 0.5))


def _first_predicted(total: int, alpha: float) -> int:
    return next(n1 for n1 in range(total // 2, total + 1)
                if two_sided_p(n1, total - n1) <= alpha)


@pytest.mark.parametrize("total,alpha", [(100, 0.001), (100, 0.05), (1000, 0.001)])
def test_predict_boundary_is_the_two_sided_test_at_alpha(total, alpha):
    n1 = _first_predicted(total, alpha)
    assert stats.predict_decision([0, n1, total - n1], alpha) == 1
    assert stats.predict_decision([0, n1 - 1, total - n1 + 1], alpha) == stats.ABSTAIN
    # A one-sided test (p-value halved) would already predict at n1 - 1:
    assert upper_tail(n1 - 1, total, 0.5) <= alpha


def test_predict_tests_the_top_two_counts_only():
    # 60 vs 20: p ~ 6e-6, predict. Against the rest (60 vs 40: p ~ 0.057) it would abstain.
    assert two_sided_p(60, 20) < 0.001 < two_sided_p(60, 40)
    assert stats.predict_decision([20, 60, 20], 0.001) == 1
    # The runner-up is the second largest count wherever it sits.
    assert stats.predict_decision([7, 0, 60, 30, 3], 0.001) == stats.ABSTAIN  # 60 vs 30
    assert two_sided_p(60, 30) > 0.001


def test_predict_ties_and_empty_counts_abstain():
    assert stats.predict_decision([0, 40, 40, 20], 0.5) == stats.ABSTAIN  # tied top two
    assert stats.predict_decision([0, 0, 0], 0.5) == stats.ABSTAIN
    assert stats.predict_decision([12], 0.001) == 0  # one class, no runner-up: 12 vs 0
    assert stats.predict_decision([0, 0, 12, 0], 0.001) == 2


def test_predict_p_value_equal_to_alpha_predicts(monkeypatch):
    """The reference abstains iff p-value > alpha: a p-value of exactly alpha predicts."""
    class Result:
        def __init__(self, pvalue):
            self.pvalue = pvalue

    monkeypatch.setattr(stats, "binomtest", lambda k, n, p: Result(0.01))
    assert stats.predict_decision([3, 9, 1], 0.01) == 1
    monkeypatch.setattr(stats, "binomtest", lambda k, n, p: Result(math.nextafter(0.01, 1)))
    assert stats.predict_decision([3, 9, 1], 0.01) == stats.ABSTAIN


def test_smooth_predict_runs_the_test_on_all_n_prediction_samples():
    # 62 vs 38 of 100 at alpha 0.05: p = 0.021, predict 3; at 0.01, abstain.
    assert two_sided_p(62, 38) < 0.05 and two_sided_p(62, 38) > 0.01
    x = torch.full(SHAPE, 0.5)
    assert Smooth(Scripted((3, 62), (8, 38)), K, 0.5).predict(x, 100, 0.05, 16) == 3
    assert Smooth(Scripted((3, 62), (8, 38)), K, 0.5).predict(x, 100, 0.01, 16) == Smooth.ABSTAIN
