"""DiffSmooth: one outer vote per noisy sample, local noise, cost, params and the card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.certify.noise import PHASE_ESTIMATE, PHASE_PREDICT, PHASE_SELECT
from bench.certify.smoothing import Smooth
from bench.data.specs import DATASETS
from bench.diffusion import Denoiser, DiffusionModel
from bench.errors import ConfigError
from methods.diffsmooth import DiffSmooth, DiffSmoothClassifier

SHAPE = (1, 8, 8)


class ZeroEps(nn.Module):
    """Predicts no noise: the denoiser then returns its input, clipped to [0, 1]."""

    def __init__(self):
        super().__init__()
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000,
                                                               dtype=torch.float64), 0)

    def forward(self, x_t, t):
        return torch.zeros_like(x_t)


def identity_denoiser(sigma=0.25) -> Denoiser:
    net = ZeroEps()
    return Denoiser(DiffusionModel(net, net.alphas_cumprod), sigma=sigma)


class SplitVotes(nn.Module):
    """Local draw j < m-1 leans slightly to class 0, the last draw is sure of class 1.

    Averaging the m softmaxes gives class 1; a vote per local draw would give class 0 m-1
    times out of m. Rows of a batch are (outer sample, local draw) in that order.
    """

    def __init__(self, m: int):
        super().__init__()
        self.m = m

    def forward(self, x):
        rows = torch.arange(x.shape[0])
        last = (rows % self.m) == self.m - 1
        p0 = torch.where(last, torch.tensor(1e-6), torch.tensor(0.55))
        probs = torch.stack([p0, 1 - p0], dim=1)
        return probs.log()


def test_outer_count_is_one_vote_per_outer_sample():
    m, n = 5, 300
    base = DiffSmoothClassifier(identity_denoiser(), SplitVotes(m), 2, shape=SHAPE, m=m,
                                local_sigma=0.25)
    smooth = Smooth(base, 2, 0.25)
    x = torch.full(SHAPE, 0.5)
    counts = smooth.sample_counts(x, n, 64, seed=0, index=0, phase=PHASE_ESTIMATE).tolist()
    # n votes in all (never n * m), all for the class of the averaged softmax.
    assert counts == [0, n, 0]
    cert = smooth.certify_record(x, 10, n, 0.001, 64)
    assert sum(cert.counts_estimate) == n and sum(cert.counts_select) == 10
    assert cert.prediction == 1


def test_cost_is_one_diffusion_and_m_classifier_passes():
    m = 4
    base = DiffSmoothClassifier(identity_denoiser(), SplitVotes(m), 2, shape=SHAPE, m=m,
                                local_sigma=0.25)
    calls = []
    base.classifier.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    cert = Smooth(base, 2, 0.25).certify_record(torch.full(SHAPE, 0.5), 20, 100, 0.001, 50)
    assert (cert.classifier_passes, cert.diffusion_passes) == (120 * m, 120)
    assert sum(calls) == 120 * m  # the classifier really ran m times per outer sample


class Recorder(nn.Module):
    """Keeps what the classifier saw; returns fixed logits."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 3)


def local_noise_seen(base, x, m):
    """The local noise added in each call: classifier input minus the denoised image."""
    base.classifier.seen.clear()
    base(x)
    got = torch.cat(base.classifier.seen).view(x.shape[0], m, *SHAPE)
    return (got - base.denoiser(x).unsqueeze(1)) / base.local_sigma


def test_fixed_local_noise_is_shared_and_batch_independent():
    m = 6
    base = DiffSmoothClassifier(identity_denoiser(), Recorder(), 3, shape=SHAPE, m=m,
                                local_sigma=0.5, local_seed=42)
    x = torch.rand(7, *SHAPE)
    noise = local_noise_seen(base, x, m)
    expected = torch.randn((m, *SHAPE), generator=torch.Generator().manual_seed(42))
    for row in noise:  # the same m draws for every outer sample
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(local_noise_seen(base, x[:2], m)[1], noise[1], atol=1e-5,
                               rtol=0)


def test_fresh_local_noise_is_new_per_sample_but_batch_independent():
    m = 3
    base = DiffSmoothClassifier(identity_denoiser(), Recorder(), 3, shape=SHAPE, m=m,
                                local_sigma=0.5, local_noise="fresh")
    x = torch.full((40, *SHAPE), 0.5)
    base.begin_phase(0, 5, PHASE_ESTIMATE)
    whole = local_noise_seen(base, x, m)
    base.begin_phase(0, 5, PHASE_ESTIMATE)
    parts = torch.cat([local_noise_seen(base, x[:13], m), local_noise_seen(base, x[13:], m)])
    torch.testing.assert_close(whole, parts)
    assert not torch.allclose(whole[0], whole[1])
    base.begin_phase(0, 6, PHASE_ESTIMATE)
    assert not torch.allclose(local_noise_seen(base, x[:1], m)[0], whole[0])
    # Standard normal: 40*3*64 = 7680 values; the sample std is within 5 standard errors
    # (se of s for a normal sample is about 1/sqrt(2n)) of 1, the mean within 5/sqrt(n) of 0.
    n = whole.numel()
    assert abs(float(whole.std()) - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(whole.mean())) < 5 / math.sqrt(n)


def test_fresh_local_noise_restarts_per_phase():
    m = 3
    base = DiffSmoothClassifier(identity_denoiser(), Recorder(), 3, shape=SHAPE, m=m,
                                local_sigma=0.5, local_noise="fresh")
    x = torch.full((4, *SHAPE), 0.5)
    seen = {}
    for phase in (PHASE_SELECT, PHASE_ESTIMATE, PHASE_PREDICT):
        base.begin_phase(0, 5, phase)
        seen[phase] = local_noise_seen(base, x, m)
    # Selection, estimation and prediction draw from distinct streams of the same image ...
    assert not torch.allclose(seen[PHASE_SELECT], seen[PHASE_ESTIMATE])
    assert not torch.allclose(seen[PHASE_ESTIMATE], seen[PHASE_PREDICT])
    # ... each restarted from its beginning by begin_phase, whatever came before.
    base.begin_phase(0, 5, PHASE_SELECT)
    local_noise_seen(base, x, m)
    base.begin_phase(0, 5, PHASE_ESTIMATE)
    torch.testing.assert_close(local_noise_seen(base, x, m), seen[PHASE_ESTIMATE])


@pytest.mark.parametrize("local_noise", ["fixed", "fresh"])
def test_the_card_lists_the_local_noise_streams(local_noise):
    """Cohen's card names the harness's streams and the local draws' (fresh: phases 7 and 8
    and the model probe's; fixed: the one generator seeded by local_seed)."""
    from bench.certify.procedures import CohenFixedN, ProcedureSpec
    from bench.certify.procedures.base import PROBE_PHASE
    from methods.diffsmooth import PHASE_LOCAL

    base = DiffSmoothClassifier(identity_denoiser(), Recorder(), 3, shape=SHAPE, m=2,
                                local_sigma=0.5, local_noise=local_noise, local_seed=7)
    spec = ProcedureSpec(name="cohen", dataset=DATASETS["digits"], method="diffsmooth", n0=10, n=20,
                         budget=None, alpha=0.001, sigma=0.25, seed=0, batch=8)
    streams = CohenFixedN(base, 3, spec).card()["noise_streams"]
    phases = [s["phase"] for s in streams]
    if local_noise == "fresh":
        assert phases == [0, 1, PHASE_LOCAL, PHASE_LOCAL + 1, PHASE_LOCAL + PROBE_PHASE]
        assert "local_seed 7" in streams[2]["seed"]
    else:
        assert phases == [0, 1, None] and "manual_seed(7)" in streams[2]["seed"]


def test_fresh_local_noise_estimation_counts_do_not_depend_on_n0():
    """One local stream per (seed, image, phase): N0 never shifts the estimation draws."""
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    # m = 1 and a large sigma': each vote follows its one local draw, so the counts would
    # change if the estimation phase drew from where the selection phase stopped.
    base = DiffSmoothClassifier(identity_denoiser(), clf, 3, shape=SHAPE, m=1, local_sigma=2.0,
                                local_noise="fresh")
    smooth = Smooth(base, 3, 0.25)
    x = torch.rand(SHAPE)
    a = smooth.certify_record(x, 10, 400, 0.001, 64, seed=3, index=2)
    b = smooth.certify_record(x, 50, 400, 0.001, 33, seed=3, index=2)
    assert a.counts_estimate == b.counts_estimate
    assert sorted(a.counts_estimate)[-2] > 0  # the votes do vary with the local draws
    # the selection counts of N0 = 10 are a prefix of those of N0 = 50 (the same stream)
    counts = smooth.sample_counts(x, 10, 7, seed=3, index=2, phase=PHASE_SELECT).tolist()[:-1]
    assert counts == a.counts_select


def test_results_do_not_depend_on_batch_size():
    m = 4
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    base = DiffSmoothClassifier(identity_denoiser(), clf, 3, shape=SHAPE, m=m, local_sigma=0.25)
    x = torch.rand(SHAPE)
    smooth = Smooth(base, 3, 0.25)
    a = smooth.sample_counts(x, 500, 500, seed=1, index=3, phase=PHASE_ESTIMATE)
    b = smooth.sample_counts(x, 500, 37, seed=1, index=3, phase=PHASE_ESTIMATE)
    assert a.tolist() == b.tolist() and int(a.sum()) == 500


@pytest.mark.parametrize(("params", "message"), [
    ({"m": 0}, "param m: expected int >= 1, got 0"),
    ({"m": 2.5}, "param m: expected int >= 1, got 2.5"),
    ({"local_sigma": 0}, r"param local_sigma must be in \(0, 10\]"),
    ({"local_noise": "sometimes"}, "param local_noise: expected one of fixed, fresh"),
    ({"local_seed": -1}, "param local_seed: expected int >= 0"),
    ({"mm": 3}, "unknown param"),
])
def test_bad_params_are_one_line_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        DiffSmooth(**params)


def test_cli_params_reach_the_card(cli, tmp_path, toy_registry):
    code, out, err = cli("run", "--method", "diffsmooth", "--dataset", "digits", "--n", "100",
                         "--n0", "20", "--max-images", "1", "--sigma", "0.5", "--quiet",
                         "--results", tmp_path / "res", "--extra-registry", toy_registry,
                         "--param", "denoiser=toy-zero-eps", "--param", "m=10",
                         "--param", "local_sigma=0.25")
    assert code == 0, err
    assert "m=10" in out and "1,200 classifier + 120 diffusion passes" in out
    summary = json.loads(next(Path(tmp_path / "res").rglob("summary.json")).read_text())
    card = summary["base_classifier"]
    assert card["m"] == 10 and card["local_sigma"] == 0.25
    assert card["pairing"] == {"outer_sigma": 0.5, "local_sigma": 0.25,
                               "classifier": "digits-cnn-gaussian-0.25",
                               "classifier_trained_sigma": 0.25}
    assert card["denoiser"]["t_star"] == 259
    assert summary["identity"]["params"]["m"] == 10 and summary["identity"]["m"] == 10
