"""The sequential (GS-CP) procedure: its alpha, its stream and its agreement with fixed N.

The false-certification test drives the decision rule (:func:`sequential_levels`, the same
:func:`checkpoint_step` the procedure calls) with exact binomial count sequences at a class
probability sitting exactly on a grid threshold, where a sound rule errs with probability at
most alpha; the harness tests check that the procedure feeds that rule the counts of Cohen's
own estimation stream. Everything is seeded, so the statistical bounds pass deterministically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from bench.certify import stats
from bench.certify.budget import Budget
from bench.certify.noise import PHASE_ESTIMATE
from bench.certify.procedures import PROCEDURES, CohenFixedN, ProcedureSpec, Sequential
from bench.certify.procedures.sequential import (
    FINE_ALPHA_F,
    default_alphas,
    default_checkpoints,
    fine_checkpoints,
    last_for_n,
    power_futility,
    sequential_levels,
)
from bench.certify.smoothing import Smooth, StreamCounts
from bench.contract import DatasetInfo
from bench.data.specs import DATASETS
from bench.errors import ConfigError
from methods.dummy import ConstantClassifier, LinearClassifier, linear_direction

GRID = tuple(round(0.25 * i, 2) for i in range(10))  # 0, 0.25, ..., 2.25


def spec(name="sequential", n=100_000, alpha=0.001, sigma=0.5, seed=0, batch=1000, **kw):
    return ProcedureSpec(name=name, dataset=DATASETS["digits"], method="test", n0=100, n=n,
                         budget=None, alpha=alpha, sigma=sigma, seed=seed,
                         batch=batch, **kw)


# ----- the schedule -------------------------------------------------------------------------
def test_default_schedule_is_the_spec_at_n_100k_and_scales_down():
    cps = default_checkpoints(last_for_n(100_000))
    assert cps == (200, 800, 3_200, 12_800, 51_200, 120_000)
    alphas = default_alphas(0.001, len(cps))
    assert alphas[:5] == (0.0001,) * 5 and alphas[5] == 0.0005
    assert default_checkpoints(last_for_n(5_000)) == (200, 800, 3_200, 6_000)
    assert default_checkpoints(last_for_n(100)) == (120,)
    assert default_alphas(0.001, 1) == (0.001,)


def test_card_and_budget_record_the_worst_case():
    p = Sequential(ConstantClassifier(0, 10), 10, spec(sigma=0.25, radii=GRID))
    card = p.card()
    assert card["checkpoints"] == [200, 800, 3_200, 12_800, 51_200, 120_000]
    assert math.isclose(sum(card["checkpoint_alphas"]), 0.001, rel_tol=1e-12)
    assert card["alpha_f"] == 0.001 and card["label_aware"] is False
    assert card["grid"] == list(GRID)
    # alpha/2 at 120k reaches 3.831 sigma = 0.958: the top reachable grid level is 0.75
    assert card["max_certifiable_radius"] == 0.75
    assert card["max_continuous_radius"] == pytest.approx(0.25 * 3.831, abs=1e-3)
    assert p.budget == Budget(n0=100, n=120_000)
    assert p.budget.predictions == 120_000
    assert PROCEDURES["sequential"] is Sequential
    # --budget: the worst case fits it; digits' default N = 5,000 without --n
    p = Sequential(ConstantClassifier(0, 10), 10, spec(n=None, radii=GRID))
    assert p.checkpoints == (200, 800, 3_200, 6_000)
    b = ProcedureSpec(name="sequential", dataset=DATASETS["digits"], method="t", n0=100, n=None,
                      budget=10_000, alpha=0.001, sigma=0.5, seed=0, batch=100)
    assert Sequential(ConstantClassifier(0, 10), 10, b).budget.predictions == 10_000


@pytest.mark.parametrize("kw, message", [
    ({"checkpoints": (800, 200)}, "strictly increasing"),
    ({"checkpoints": (200, 200, 800)}, "strictly increasing"),
    ({"checkpoints": (0, 800)}, "positive integers"),
    ({"checkpoints": (200, 800), "checkpoint_alphas": (0.0005, 0.0006)}, "sum to"),
    ({"checkpoints": (200, 800), "checkpoint_alphas": (0.001,)}, "one per checkpoint"),
    ({"checkpoint_alphas": (0.001,) * 6}, "sum to"),
    ({"radii": (0.25, -1.0)}, "non-negative"),
])
def test_bad_schedules_are_refused_in_one_line(kw, message):
    with pytest.raises(ConfigError, match=message) as err:
        Sequential(ConstantClassifier(0, 10), 10, spec(**kw))
    assert "\n" not in str(err.value)


def test_another_procedures_method_is_refused():
    class Multi:
        id, PROCEDURE = "multiscale", "cascade"

    class Plain:
        id = "plain"

    with pytest.raises(ConfigError, match="cascade procedure"):
        Sequential.run_sigma(Multi(), None)
    assert Sequential.run_sigma(Plain(), None) == 0.25
    assert Sequential.run_sigma(Plain(), 0.5) == 0.5


# ----- alpha: false certification at a threshold -------------------------------------------
ALPHA, RUNS, SIGMA = 0.01, 200_000, 0.5
THRESHOLDS = norm.cdf(np.asarray(GRID) / SIGMA)
CPS = default_checkpoints(last_for_n(100_000))


def counts_at(p: float, seed: int) -> np.ndarray:
    """RUNS cumulative success counts at the checkpoints for success probability p."""
    rng = np.random.default_rng(seed)
    return rng.binomial(np.diff((0, *CPS)), p, size=(RUNS, len(CPS))).cumsum(axis=1)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_false_certification_rate_is_at_most_alpha(k):
    """p_A exactly at p_k: "radius >= r_k" is the bound's failure (any p_A below p_k makes it
    false, and the rate is continuous in p_A). Sound: rate <= alpha + 4 sd. All of alpha at
    every checkpoint (no split) errs far more often on the same runs: the test has power."""
    counts = counts_at(THRESHOLDS[k], seed=k)
    bound = ALPHA + 4 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)
    level, _ = sequential_levels(counts, CPS, default_alphas(ALPHA, len(CPS)), THRESHOLDS)
    assert np.mean(level >= k) <= bound
    no_futility, _ = sequential_levels(counts, CPS, default_alphas(ALPHA, len(CPS)),
                                       THRESHOLDS, alpha_f=0.0)
    assert np.mean(no_futility >= k) <= bound
    broken, _ = sequential_levels(counts, CPS, (ALPHA,) * len(CPS), THRESHOLDS)
    assert np.mean(broken >= k) > 2 * bound


# ----- fine-cp: fine looks, conditional-power futility --------------------------------------
def test_fine_cp_schedule_looks_every_1_1_up_to_n():
    cps = fine_checkpoints(100_000)
    assert cps[:6] == (100, 110, 121, 134, 148, 163) and cps[-1] == 100_000
    pairs = zip(cps[:-2], cps[1:-1], strict=True)
    assert len(cps) == 74 and all(10 * b >= 11 * a for a, b in pairs)
    p = Sequential(ConstantClassifier(0, 10), 10,
                   spec(sigma=0.25, radii=GRID, sequential_rule="fine-cp"))
    assert p.checkpoints == cps and p.budget == Budget(n0=100, n=100_000)  # never above N
    assert p.alphas[-1] == pytest.approx(0.0008) and sum(p.alphas) <= 0.001 * (1 + 1e-9)
    assert len(set(p.alphas[:-1])) == 1
    card = p.card()
    assert (card["rule"], card["futility_power"], card["alpha_f"]) == ("fine-cp", 0.05, 0.01)
    assert Sequential(ConstantClassifier(0, 10), 10, spec(radii=GRID)).card()["rule"] == "gs-cp"
    with pytest.raises(ConfigError, match="unknown sequential rule"):
        Sequential(ConstantClassifier(0, 10), 10, spec(sequential_rule="bogus"))


FINE_RUNS, FINE_N = 100_000, 20_000
FINE_CPS = fine_checkpoints(FINE_N)


def fine_counts_at(p: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.diff((0, *FINE_CPS))
    return rng.binomial(steps, p, size=(FINE_RUNS, len(FINE_CPS))).astype(np.int32).cumsum(
        axis=1)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_fine_cp_false_certification_rate_is_at_most_alpha(k):
    """fine-cp's rule (its looks, its alpha split, conditional-power futility) at p_A exactly
    on a threshold. Each run errs with probability <= ALPHA and runs are independent, so the
    false claims X are stochastically below Binomial(runs, ALPHA): a sound rule passes
    X <= its 1 - 1e-6 quantile except with probability 1e-6 (and the seed is fixed). The same
    runs convict ALPHA at every look (no union bound)."""
    counts = fine_counts_at(THRESHOLDS[k], seed=10 + k)
    limit = binom.ppf(1 - 1e-6, FINE_RUNS, ALPHA)
    alphas = default_alphas(ALPHA, len(FINE_CPS), 0.8)
    power = power_futility(FINE_CPS, alphas, THRESHOLDS)
    level, stopped = sequential_levels(counts, FINE_CPS, alphas, THRESHOLDS, FINE_ALPHA_F, power)
    assert np.sum(level >= k) <= limit
    assert np.mean(stopped < len(FINE_CPS) - 1) > 0.5  # futility stops most runs early
    broken = (ALPHA,) * len(FINE_CPS)
    level, _ = sequential_levels(counts, FINE_CPS, broken, THRESHOLDS, FINE_ALPHA_F,
                                 power_futility(FINE_CPS, broken, THRESHOLDS))
    assert np.sum(level >= k) > limit


# ----- the harness: a real network, Cohen's streams ---------------------------------------
def tiny_net(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def images(count: int, seed=1) -> torch.Tensor:
    return torch.rand((count, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_stream_counts_are_prefix_stable():
    net, x = tiny_net(), images(1)[0]
    smooth = Smooth(net, 10, 0.5)
    counter = StreamCounts(smooth, x, 37, seed=3, index=5, phase=PHASE_ESTIMATE)
    assert counter.extend_to(200) == smooth._checked(
        smooth.sample_counts(x, 200, 1000, seed=3, index=5, phase=PHASE_ESTIMATE).tolist(), 5)
    at_900 = counter.extend_to(900)
    whole = smooth.sample_counts(x, 900, 256, seed=3, index=5, phase=PHASE_ESTIMATE)
    assert at_900 == smooth._checked(whole.tolist(), 5)
    with pytest.raises(ValueError):
        counter.extend_to(800)


SCHEDULES = [(64, (200, 800, 3_200)), (1000, (200, 800, 3_200)), (1000, (500, 800, 3_200))]


def test_checkpoint_counts_are_cohens_fixed_n_counts():
    """Whatever the checkpoints and the batch, the counts at n are a fixed-N run's at N = n,
    and each checkpoint's bound is Cohen's at (N = n_j, alpha_j) on the same seed."""
    net, xs = tiny_net(), images(3)
    for idx, x in enumerate(xs):
        at_800 = []
        for batch, cps in SCHEDULES:
            seq = Sequential(net, 10, spec(sigma=0.25, batch=batch, radii=GRID,
                                           checkpoints=cps), alpha_f=0.0)
            cert = seq.certify(x, idx, None)
            assert [s["n"] for s in cert.stages] == list(cps[: len(cert.stages)])
            for stage, a in zip(cert.stages, seq.alphas, strict=False):
                cohen = CohenFixedN(net, 10, spec("cohen", n=stage["n"], alpha=a, sigma=0.25,
                                                  batch=333)).certify(x, idx, None)
                assert cohen.counts_select == cert.counts_select
                assert cohen.top_class == cert.top_class
                assert cohen.counts_estimate == stage["counts_estimate"]
                assert cohen.count == stage["count"]
                assert cohen.p_lower == stage["p_lower"]
            assert cert.p_lower == max(s["p_lower"] for s in cert.stages)
            at_800 += [st["counts_estimate"] for st in cert.stages if st["n"] == 800]
        assert len(at_800) >= 2 and all(c == at_800[0] for c in at_800)


def test_the_procedure_applies_the_pure_rule():
    """On a network, each certificate's level and stop are those of sequential_levels on its
    own counts; radius, prediction and passes follow from the level."""
    net, xs = tiny_net(2), images(12, seed=4)
    seq = Sequential(net, 10, spec(sigma=0.25, n=3_000, radii=GRID))
    for idx, x in enumerate(xs):
        cert = seq.certify(x, idx, None)
        row = [s["count"] for s in cert.stages]
        row += [row[-1]] * (len(seq.checkpoints) - len(row))  # never read past the stop
        level, stopped = sequential_levels(np.array([row]), seq.checkpoints, seq.alphas,
                                           seq.thresholds)
        assert cert.level == level[0] and len(cert.stages) == stopped[0] + 1
        assert cert.n == cert.stages[-1]["n"]
        assert cert.classifier_passes == 100 + cert.n
        if cert.level < 0:
            assert cert.prediction == -1 and cert.radius == 0
        else:
            assert cert.prediction == cert.top_class
            assert seq.grid[cert.level] <= cert.radius
            if cert.level + 1 < len(seq.grid):
                assert cert.radius < seq.grid[cert.level + 1]


def test_a_constant_classifier_stops_at_the_top_level_after_800_samples():
    """The spec's example: p_A = 1 at sigma = 1 certifies 2.25 after 800 samples."""
    cert = Sequential(ConstantClassifier(3, 10), 10, spec(sigma=1.0, radii=GRID)).certify(
        torch.full((1, 8, 8), 0.5), 0, 3)
    assert (cert.prediction, cert.level, cert.n) == (3, 9, 800)
    assert cert.outcome == "certified at grid level 9 (r >= 2.25) after 800 samples"
    assert cert.radius == pytest.approx(stats.radius_from_bound(cert.p_lower, 1.0))
    assert cert.stage == -1  # no cascade-style "accept"


def test_label_aware_exit_abstains_after_selection():
    s = spec(radii=GRID, label_aware=True)
    seq = Sequential(ConstantClassifier(3, 10), 10, s)
    x = torch.full((1, 8, 8), 0.5)
    cert = seq.certify(x, 0, 4)
    assert (cert.prediction, cert.radius, cert.top_class, cert.n) == (-1, 0.0, 3, 0)
    assert cert.outcome == "wrong class: stopped after selection (label-aware)"
    assert cert.classifier_passes == 100 and cert.stages == [] and cert.correct == 0
    assert seq.certify(x, 0, 3).prediction == 3
    assert Sequential(ConstantClassifier(3, 10), 10, spec(radii=GRID)).certify(
        x, 0, 4).prediction == 3  # not label-aware: certifies the (wrong) class as Cohen does


def test_a_bound_equal_to_a_threshold_claims_nothing_there():
    """The certified level is the largest with lb > p_i, strictly (fixed-N Cohen keeps the
    reference's lb >= 1/2: tests/test_soundness.py)."""
    from scipy.stats import beta

    from bench.certify.procedures.sequential import checkpoint_step, level_of

    n, k, a = 1000, 900, 0.0005
    lb = float(beta.ppf(a, k, n - k + 1))
    thresholds = np.array([0.5, lb, 0.99])
    level, bound, _, _ = checkpoint_step(-1, k, n, a, thresholds, 2, 0.0)
    assert float(bound) == lb and int(level) == 0
    assert level_of(thresholds, np.nextafter(lb, 1)) == 1
    assert level_of(thresholds, 0.5) == -1 and level_of(thresholds, np.nextafter(0.5, 1)) == 0
    levels, _ = sequential_levels(np.array([[k]]), [n], [a], thresholds)
    assert levels.tolist() == [0]


# ----- agreement with Cohen at N = 100,000 --------------------------------------------------
AGREE_IMAGES = 40
INFO = DatasetInfo("toy", (1, 1, 16), 2, (0.5,), (0.25,))


def test_levels_agree_with_cohen_at_100k():
    """Linear classifier (class 0 below u.v = 2, u the mean direction), so the true radius of
    an image of constant value c is 2 - 4c, spread uniformly over [-0.3, 2.0] at sigma = 0.5.
    An image can disagree only when its p_A lies within a few CP widths of a grid threshold
    (both bounds then sit on either side of it): a band of about +-0.01 in radius per grid
    point, so about 10 x 0.02 / 2.3 = 9% of images at most, and about half of those disagree;
    expected agreement about 95-100%. We assert at most 4 of 40 disagree each way."""
    u, t = linear_direction(INFO, "mean", 0, 2.0)
    f = LinearClassifier(u, t, 0, 1, 2)
    rho = np.random.default_rng(7).uniform(-0.3, 2.0, AGREE_IMAGES)
    seq = Sequential(f, 2, spec(radii=GRID, batch=20_000, seed=11))
    smooth = Smooth(f, 2, 0.5)
    seq_not_cohen = cohen_not_seq = 0
    samples = 0
    for idx, r in enumerate(rho):
        x = torch.full(INFO.shape, float((2.0 - r) / 4))
        cert = seq.certify(x, idx, 0)
        cohen = smooth.certify_record(x, 100, 100_000, 0.001, 20_000, seed=11, index=idx)
        assert cert.top_class == cohen.top_class  # the same selection samples
        cohen_level = (int(np.searchsorted(GRID, cohen.radius, side="right")) - 1
                       if cohen.prediction >= 0 else -1)
        seq_not_cohen += cert.level > cohen_level
        cohen_not_seq += cohen_level > cert.level
        samples += cert.n
    assert seq_not_cohen <= 4 and cohen_not_seq <= 4
    assert samples < 0.5 * AGREE_IMAGES * 100_000  # and it is much cheaper
