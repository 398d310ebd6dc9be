"""SmoothAdv attacks: the L2 budget and the [0, 1] box hold per example, the soft smoothed
loss goes up, and on a linear 2-class net PGD lands exactly on epsilon along w_other - w_y."""

from __future__ import annotations

import pytest
import torch

from bench.training.attacks import smoothadv_ddn, smoothadv_pgd
from bench.training.losses import logits_on

ATTACKS = [smoothadv_pgd, smoothadv_ddn]


def linear_net(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    k, d = weight.shape
    lin = torch.nn.Linear(d, k, bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def per_example_loss(net, x, y, noise) -> torch.Tensor:
    g = logits_on(net, x, noise).softmax(-1).mean(1)
    return -g.gather(1, y[:, None]).squeeze(1).log()


def test_pgd_on_a_linear_two_class_net_moves_epsilon_along_the_weight_difference():
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 2.0]])
    net = linear_net(w)
    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    gen = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(2, 3, 1, 2, 2, generator=gen)
    eps = 0.2  # small enough that the box never clips
    adv = smoothadv_pgd(net, x, y, noise, epsilon=eps, steps=4, gen=gen)
    for i, label in enumerate(y.tolist()):
        direction = w[1 - label] - w[label]
        expected = x[i].flatten() + eps * direction / direction.norm()
        assert torch.allclose(adv[i].flatten(), expected, atol=1e-6)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_respects_budget_and_box_and_increases_the_loss(attack):
    gen = torch.Generator().manual_seed(1)
    net = linear_net(torch.randn(3, 16, generator=gen), torch.randn(3, generator=gen))
    x = torch.rand(8, 1, 4, 4, generator=gen)
    x[:, :, 0, :] = 0.0  # pixels on the box's faces
    x[:, :, 1, :] = 1.0
    with torch.no_grad():
        y = net(x).argmax(1)  # attack correctly classified points
    noise = 0.25 * torch.randn(8, 4, 1, 4, 4, generator=gen)
    for eps in (0.1, 0.5, 3.0):
        adv = attack(net, x, y, noise, epsilon=eps, steps=6, gen=gen)
        delta = (adv - x).flatten(1).norm(dim=1)
        assert (delta <= eps + 1e-5).all(), (eps, delta)
        assert adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            before, after = per_example_loss(net, x, y, noise), per_example_loss(net, adv, y, noise)
        assert (after > before).all(), (eps, before, after)


def test_pgd_zero_gradient_takes_a_random_direction_and_no_start_noise():
    net = linear_net(torch.zeros(2, 4), torch.tensor([1.0, 0.0]))  # constant logits
    x = torch.full((3, 1, 2, 2), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    noise = torch.zeros(3, 2, 1, 2, 2)
    gen = torch.Generator().manual_seed(0)
    adv = smoothadv_pgd(net, x, y, noise, epsilon=0.3, steps=3, gen=gen)
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms > 0.05).all() and (norms <= 0.3 + 1e-6).all()
    assert torch.equal(smoothadv_pgd(net, x, y, noise, epsilon=0.0, steps=3, gen=gen), x)


def test_attack_takes_no_parameter_gradients_and_restores_train_mode():
    net = linear_net(torch.randn(2, 4))
    net.train()
    x = torch.rand(2, 1, 2, 2)
    smoothadv_pgd(net, x, torch.tensor([0, 1]), torch.zeros(2, 1, 1, 2, 2), epsilon=0.5, steps=2,
                  gen=torch.Generator().manual_seed(0))
    assert net.training
    assert all(p.grad is None for p in net.parameters())
