"""Soft-smoothing losses (SmoothAdv's attack loss, MACER, consistency) against hand-computed values.

Two noise draws of a 2-class problem with logits u_1 = (0, ln 3) and u_2 = (0, 0) give
softmax p_1 = (1/4, 3/4), p_2 = (1/2, 1/2) and the noise average p_bar = (3/8, 5/8).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from bench.training.losses import (
    consistency_loss,
    logits_on,
    macer_loss,
    soft_smoothed_nll,
    std_normal_icdf,
)

LN3 = math.log(3.0)
PHI_INV = NormalDist().inv_cdf


def two_draws() -> torch.Tensor:
    return torch.tensor([[[0.0, LN3], [0.0, 0.0]]], dtype=torch.float64)  # (B=1, m=2, K=2)


def test_soft_smoothed_nll_is_minus_log_of_the_averaged_softmax():
    y = torch.tensor([1])
    assert soft_smoothed_nll(two_draws(), y).item() == pytest.approx(-math.log(5 / 8))
    # Not the mean per-draw CE (-(log 3/4 + log 1/2) / 2), which is a different objective.
    assert soft_smoothed_nll(two_draws(), y).item() != pytest.approx(
        -(math.log(3 / 4) + math.log(1 / 2)) / 2)
    # The floor keeps it finite where G_y underflows.
    saturated = torch.tensor([[[0.0, 1e4]]])
    assert soft_smoothed_nll(saturated, torch.tensor([0])).item() == pytest.approx(
        -math.log(1e-20), rel=1e-6)


def test_logits_on_adds_each_draw_to_its_example():
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    noise = torch.tensor([[[0.0, 0.0], [1.0, -1.0]], [[0.5, 0.5], [0.0, 0.0]]])
    out = logits_on(net, x, noise)
    expected = torch.tensor([[[1.0, 2.0], [2.0, 0.0]], [[0.5, 1.0], [0.0, 0.0]]])
    assert out.shape == (2, 2, 2) and torch.allclose(out, expected)


def test_macer_loss_matches_hand_computation_with_beta_only_in_the_robustness_term():
    sigma, lbd, gamma, beta = 0.5, 3.0, 8.0, 2.0
    # beta = 2: softmax(2 u_1) = (1/10, 9/10), softmax(2 u_2) = (1/2, 1/2), average (3/10, 7/10).
    xi = PHI_INV(0.7) - PHI_INV(0.3)
    expected = -math.log(5 / 8 + 1e-10) + lbd * sigma / 2 * (gamma - xi)
    got = macer_loss(two_draws(), torch.tensor([1]), sigma=sigma, lbd=lbd, gamma=gamma, beta=beta)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_macer_loss_counts_robustness_only_for_correct_examples_and_averages_over_the_batch():
    logits = torch.cat([two_draws(), two_draws()])  # label 1 is right, label 0 is wrong
    y = torch.tensor([1, 0])
    sigma, lbd, gamma = 0.25, 12.0, 8.0
    xi = PHI_INV(5 / 8) - PHI_INV(3 / 8)  # beta = 1: same distribution as the CE term
    expected = (-math.log(5 / 8 + 1e-10) - math.log(3 / 8 + 1e-10)
                + lbd * sigma / 2 * (gamma - xi)) / 2
    got = macer_loss(logits, y, sigma=sigma, lbd=lbd, gamma=gamma, beta=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_macer_hinge_is_off_beyond_gamma():
    xi = PHI_INV(5 / 8) - PHI_INV(3 / 8)  # about 0.637
    got = macer_loss(two_draws(), torch.tensor([1]), sigma=1.0, lbd=5.0, gamma=xi - 0.01,
                     beta=1.0)
    assert got.item() == pytest.approx(-math.log(5 / 8 + 1e-10), rel=1e-9)


def test_macer_drops_examples_whose_runner_up_is_zero_without_nan_gradients():
    # beta * 200 saturates the tempered softmax: p2 = 0 exactly, Phi^-1(0) = -inf.
    logits = torch.tensor([[[0.0, 200.0], [0.0, 200.0]]], requires_grad=True)
    loss = macer_loss(logits, torch.tensor([1]), sigma=0.25, lbd=12.0, gamma=8.0, beta=16.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_macer_robustness_gradient_flows_through_the_inverse_cdf():
    logits = two_draws().clone().requires_grad_(True)
    plain = two_draws().clone().requires_grad_(True)
    macer_loss(logits, torch.tensor([1]), sigma=0.5, lbd=1.0, gamma=8.0, beta=1.0).backward()
    macer_loss(plain, torch.tensor([1]), sigma=0.5, lbd=0.0, gamma=8.0, beta=1.0).backward()
    assert not torch.allclose(logits.grad, plain.grad)
    assert std_normal_icdf(torch.tensor(0.975, dtype=torch.float64)).item() == pytest.approx(
        PHI_INV(0.975), rel=1e-9)


def test_consistency_loss_matches_hand_computation():
    lbd, eta = 10.0, 0.5
    ce = -(math.log(3 / 4) + math.log(1 / 2)) / 2
    kl_1 = 3 / 8 * math.log((3 / 8) / (1 / 4)) + 5 / 8 * math.log((5 / 8) / (3 / 4))
    kl_2 = 3 / 8 * math.log((3 / 8) / (1 / 2)) + 5 / 8 * math.log((5 / 8) / (1 / 2))
    entropy = -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8))
    expected = ce + lbd * (kl_1 + kl_2) / 2 + eta * entropy
    got = consistency_loss(two_draws(), torch.tensor([1]), lbd=lbd, eta=eta)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_consistency_with_eta_equal_lbd_is_cross_entropy_between_average_and_copies():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, dtype=torch.float64)  # 4 examples, 3 draws, 5 classes
    y = torch.tensor([0, 1, 2, 3])
    lbd = 2.0
    p_bar = logits.softmax(-1).mean(1, keepdim=True)
    cross = -(p_bar * logits.log_softmax(-1)).sum(-1).mean()
    mean_ce = torch.nn.functional.cross_entropy(logits.reshape(12, 5), y.repeat_interleave(3))
    got = consistency_loss(logits, y, lbd=lbd, eta=lbd)
    assert got.item() == pytest.approx((mean_ce + lbd * cross).item(), rel=1e-9)
