"""The cascade procedure (multi-scale smoothing): its alpha, its bounds and its streams.

The statistical tests use closed-form base classifiers: a "slab" classifier labels a noisy
image by where the harness's noise falls along one pixel, ``t = (v - x)_0 / sigma_k ~ N(0, 1)``,
so every class probability at every scale is known exactly (``Phi`` of the slab's ends) and
so is the true certified radius.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom, norm

from bench.certify import stats
from bench.certify.budget import Budget
from bench.certify.noise import PHASE_PREDICT, NoiseStream
from bench.certify.procedures import Cascade, CohenFixedN, ProcedureSpec
from bench.certify.procedures.cascade import StageLevels, alpha_split, spent, stage_phases
from bench.data.specs import DATASETS

X = torch.full((1, 1, 2), 0.5)  # one tiny "image"; only pixel 0's noise matters


class Slab(torch.nn.Module):
    """Labels by the standardized noise t at pixel 0: class ``labels[i]`` on the i-th interval
    of ``cuts`` (probabilities, increasing). P(class) is exact: differences of the cuts."""

    def __init__(self, sigma: float, cuts: list[float], labels: list[int]):
        super().__init__()
        self.sigma = sigma
        self.edges = torch.tensor([norm.ppf(c) for c in cuts], dtype=torch.float64)
        self.labels = torch.tensor(labels)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        t = (v[:, 0, 0, 0].double() - X[0, 0, 0].double()) / self.sigma
        return self.labels[(t.unsqueeze(1) >= self.edges).sum(1)]


def spec(alpha=0.001, n=1000, n0=100, batch=4096, seed=0) -> ProcedureSpec:
    return ProcedureSpec(name="cascade", dataset=DATASETS["digits"], method="test", n0=n0, n=n,
                         budget=None, alpha=alpha, sigma=1.0, seed=seed, batch=batch)


def cascade(bases, scales, p0=0.5, classes=3, **kw) -> Cascade:
    s = spec(**kw)
    return Cascade(bases, scales, p0, classes, s, Budget(n0=s.n0, n=s.n, stages=len(scales)))


# ----- alpha ------------------------------------------------------------------------------
@pytest.mark.parametrize("stages", [1, 2, 3, 5])
@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_the_split_spends_exactly_alpha(stages, classes):
    levels = alpha_split(0.001, stages, classes)
    assert math.isclose(spent(levels, classes), 0.001, rel_tol=1e-12)
    assert levels[-1].upper_each == 0  # the last stage is never skipped before an acceptance


def reference_split(alpha: float, stages: int) -> list[StageLevels]:
    """The reference code's alpha/(k+1) on each side of stage k's two-sided interval."""
    return [StageLevels(alpha / (k + 1), alpha / (k + 1)) for k in range(stages)]


def test_the_reference_split_overspends():
    assert spent(reference_split(0.001, 3), 1) > 1.8 * 0.001


# ----- statistics -------------------------------------------------------------------------
ALPHA, TRIALS, N = 0.05, 1500, 2000


def boundary_cascade() -> Cascade:
    """Stage 0 (sigma 1): class 1 sits exactly at p0 = 1/2 (class 2 and 0 have 1/4 each).
    Stage 1 (sigma 0.5): class 2 with probability 0.95. The true certified radius is 0 for
    every class: any perturbation towards class 1 makes the cascade answer 1 at sigma 1,
    any other makes it fall through to class 2. So every positive radius is a failure; it
    happens when stage 0's lower bound of class 1 is above 1/2 (accept 1) or its upper
    bound is below 1/2 (skip, then certify 2 through a wrong off-class bound)."""
    return cascade([Slab(1.0, [0.5, 0.75], [1, 2, 0]), Slab(0.5, [0.95], [2, 0])],
                   [1.0, 0.5], alpha=ALPHA, n=N)


def failures(proc: Cascade, trials: int = TRIALS) -> int:
    """Images (independent streams: one index each) certified with a positive radius."""
    return sum(proc.certify(X, idx, None).radius > 0 for idx in range(trials))


def significantly_above(count: int, trials: int, rate: float) -> bool:
    """One-sided exact binomial test at level 1e-4: is the failure rate above ``rate``?"""
    return binom.sf(count - 1, trials, rate) < 1e-4


def test_failure_rate_stays_below_alpha_where_a_class_sits_at_p0():
    fails = failures(boundary_cascade())
    # Union bound of the two failure events at stage 0: alpha/4 + alpha/12 (K = 2, C = 3).
    assert not significantly_above(fails, TRIALS, ALPHA)
    assert not significantly_above(fails, TRIALS, ALPHA / 4 + ALPHA / 12)


def test_the_same_check_catches_the_reference_split():
    """The power of the test above: with alpha/(k+1) per side the same image fails about
    2 alpha of the time (both tails of stage 0 at level alpha), and the check says so."""
    proc = boundary_cascade()
    proc.levels = reference_split(ALPHA, 2)
    fails = failures(proc)
    assert significantly_above(fails, TRIALS, ALPHA), fails


def test_radius_is_the_minimum_of_the_accepting_and_off_class_radii():
    """Stage 0: top class 0 with 0.4, classes 1, 2 with 0.3 each: skipped (all below 1/2).
    Stage 1: class 2 with 0.9. R = min(0.5 (PhiInv(p_lo) - 0), 1.0 (0 - PhiInv(u)))
    where u is the largest per-class upper bound at stage 0 among classes other than 2."""
    proc = cascade([Slab(1.0, [0.3, 0.6], [1, 2, 0]), Slab(0.5, [0.9], [2, 0])], [1.0, 0.5],
                   n=20000)
    cert = proc.certify(X, 3, 2)
    first, second = cert.stages
    assert first["decision"] == "skip" and second["decision"] == "accept"
    assert cert.prediction == 2 and cert.stage == 1 and cert.outcome == "accept at sigma=0.5"
    n, a = 20000, 0.001
    p_lo = stats.cp_lower(second["counts_estimate"][2], n, a / 2)  # last stage: alpha / K
    uppers = [stats.cp_upper(c, n, a / 4 / 3) for c in first["counts_estimate"]]  # a/(2KC)
    off = max(uppers[0], uppers[1])
    expected = min(0.5 * norm.ppf(p_lo), 1.0 * (0 - norm.ppf(off)))
    assert cert.radius == pytest.approx(expected, rel=1e-12)
    # Here the off-class bound binds: true value 1.0 * -PhiInv(0.4) = 0.253 < 0.5 PhiInv(0.9).
    assert cert.radius < 1.0 * -norm.ppf(0.4)
    assert cert.radius == pytest.approx(-norm.ppf(0.4), abs=0.03)


def test_the_first_of_several_skipped_stages_can_bind():
    """K = 3: stages 0 and 1 are skipped, stage 2 accepts class 2. Stage 0's other classes
    come close to p0 (class 0 at 0.45), stage 1's stay far (0.3): the radius is stage 0's
    off-class radius, about 0.09, never stage 1's (about 0.25, twice the truth) nor the
    accepting stage's (about 0.54). True radius: min(-PhiInv(0.45), 0.5 (-PhiInv(0.3)),
    0.25 PhiInv(0.99)) = 0.126."""
    proc = cascade([Slab(1.0, [0.45, 0.75], [0, 1, 2]), Slab(0.5, [0.4, 0.7], [2, 0, 1]),
                    Slab(0.25, [0.99], [2, 0])], [1.0, 0.5, 0.25], n=20000)
    cert = proc.certify(X, 0, 2)
    assert [s["decision"] for s in cert.stages] == ["skip", "skip", "accept"]
    assert cert.prediction == 2 and cert.stage == 2
    n, a = 20000, 0.001
    upper_each = a / 3 / 2 / 3  # alpha / (2KC)
    r_off = [sigma * -norm.ppf(max(stats.cp_upper(c, n, upper_each)
                                   for k, c in enumerate(stage["counts_estimate"]) if k != 2))
             for sigma, stage in zip((1.0, 0.5), cert.stages[:2], strict=True)]
    r_accept = 0.25 * norm.ppf(stats.cp_lower(cert.stages[2]["counts_estimate"][2], n, a / 3))
    assert r_off[0] < r_off[1] < r_accept  # the first skipped stage binds
    assert cert.radius == pytest.approx(r_off[0], rel=1e-12)
    assert cert.radius < -norm.ppf(0.45)  # never above the true radius


def test_an_off_class_reaching_p0_at_a_skipped_scale_abstains():
    """The undecided rule: the selected class's upper bound at or above p0 stops the cascade
    (no fall-through on a point estimate below p0)."""
    proc = cascade([Slab(1.0, [0.49], [1, 0]), Slab(0.5, [0.99], [0, 1])], [1.0, 0.5], n=2000)
    cert = proc.certify(X, 0, 1)
    assert cert.prediction == -1 and len(cert.stages) == 1
    assert cert.outcome == "abstain: undecided at sigma=1"


def test_a_lower_bound_equal_to_p0_is_no_acceptance(monkeypatch):
    """A claim needs p_lo > p0: at p_lo = p0 another class may sit at p0 as well."""
    proc = cascade([Slab(1.0, [0.5], [0, 1])], [1.0], p0=0.6, classes=2, n=100)
    monkeypatch.setattr(stats, "cp_lower", lambda k, n, a: 0.6)
    cert = proc.certify(X, 0, 0)
    assert cert.prediction == -1 and cert.radius == 0.0 and cert.stage == -1
    monkeypatch.setattr(stats, "cp_lower", lambda k, n, a: 0.6 + 1e-9)
    cert = proc.certify(X, 0, 0)
    assert cert.prediction >= 0 and 0 < cert.radius < 1e-8


def test_an_off_class_bound_equal_to_p0_leaves_no_radius(monkeypatch):
    """Stage 0 is skipped (class 0 at 0.45 on top), stage 1 accepts class 2; stage 0's bound
    on class 1 pinned at exactly p0 gives an off-class radius of 0: no claim, not radius 0."""
    real = stats.cp_upper_each

    def pinned(value):
        def uppers(counts, n, alpha):
            return [value if c == 1 else u for c, u in enumerate(real(counts, n, alpha))]
        return uppers

    proc = cascade([Slab(1.0, [0.45, 0.8], [0, 1, 2]), Slab(0.5, [0.99], [2, 0])], [1.0, 0.5],
                   n=5000, n0=2000)
    monkeypatch.setattr(stats, "cp_upper_each", pinned(0.5))
    cert = proc.certify(X, 0, 2)
    assert (cert.prediction, cert.radius, cert.stage) == (-1, 0.0, -1)
    assert [s["decision"] for s in cert.stages] == ["skip", "no positive radius"]
    assert cert.outcome == "abstain: another class may reach p0 at sigma=1"
    monkeypatch.setattr(stats, "cp_upper_each", pinned(0.5 - 1e-9))
    cert = proc.certify(X, 0, 2)
    assert cert.prediction == 2 and 0 < cert.radius < 1e-8


def test_all_scales_below_p0_abstains_with_the_reason():
    proc = cascade([Slab(1.0, [0.3, 0.6], [1, 2, 0]), Slab(0.5, [0.3, 0.6], [1, 2, 0])],
                   [1.0, 0.5], n=5000)
    cert = proc.certify(X, 0, 0)
    assert cert.prediction == -1 and cert.outcome == "abstain: no scale reached p0"
    assert [s["decision"] for s in cert.stages] == ["skip", "below p0"]


# ----- Cohen, streams, invariance ------------------------------------------------------------
class Linear(torch.nn.Module):
    """A fixed random linear classifier on 3x4x4 images (logits)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(48, 5)
        torch.nn.init.normal_(self.net.weight, generator=torch.Generator().manual_seed(1))

    def forward(self, v):
        return self.net(v.flatten(1))


def test_one_scale_with_p0_half_is_exactly_cohen():
    base = Linear()
    image = torch.rand((3, 4, 4), generator=torch.Generator().manual_seed(2))
    for sigma in (0.25, 1.0):
        s = ProcedureSpec(name="cohen", dataset=DATASETS["digits"], method="test", n0=100, n=3000,
                          budget=None, alpha=0.001, sigma=sigma, seed=5, batch=512)
        cohen = CohenFixedN(base, 5, s)
        one = Cascade([base], [sigma], 0.5, 5, s, Budget(n0=100, n=3000))
        for idx in range(6):
            a, b = cohen.certify(image, idx, 0), one.certify(image, idx, 0)
            fields = ("prediction", "radius", "p_lower", "top_class", "count",
                      "counts_select", "counts_estimate", "classifier_passes")
            assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_stages_draw_from_their_own_streams():
    phases = [p for k in range(4) for p in stage_phases(k)]
    assert stage_phases(0) == (0, 1)  # Cohen's
    assert len(set(phases)) == len(phases) and PHASE_PREDICT not in phases
    assert not {7, 8, 9} & set(phases)  # DiffSmooth's local-noise phases


def test_batch_size_does_not_change_a_certificate():
    bases = [Slab(1.0, [0.3, 0.6], [1, 2, 0]), Slab(0.5, [0.9], [2, 0])]
    small = cascade(bases, [1.0, 0.5], n=3000, batch=7)
    large = cascade(bases, [1.0, 0.5], n=3000, batch=5000)
    for idx in range(3):
        a, b = small.certify(X, idx, 2), large.certify(X, idx, 2)
        assert (a.prediction, a.radius, a.stages) == (b.prediction, b.radius, b.stages)


def test_passes_count_the_stages_visited():
    proc = cascade([Slab(1.0, [0.3, 0.6], [1, 2, 0]), Slab(0.5, [0.9], [2, 0])], [1.0, 0.5],
                   n=1000)
    cert = proc.certify(X, 0, 2)
    assert len(cert.stages) == 2 and cert.classifier_passes == 2 * 1100


def test_card_records_the_split_and_the_largest_radius():
    proc = cascade([Slab(1.0, [0.5], [0, 1]), Slab(0.5, [0.5], [0, 1]),
                    Slab(0.25, [0.5], [0, 1])], [0.25, 1.0, 0.5], p0=0.6, classes=2)
    card = proc.card()
    assert card["scales"] == [1.0, 0.5, 0.25] and card["p0"] == 0.6
    assert card["alpha_spent"] == pytest.approx(0.001)
    assert [s["lower"] for s in card["alpha_split"]] == pytest.approx([0.001 / 6] * 2 + [0.001 / 3])
    # All n agree at sigma 1: PhiInv((alpha/6)^(1/n)) - PhiInv(0.6).
    p_lo = (0.001 / 6) ** (1 / 1000)
    assert card["max_certifiable_radius"] == pytest.approx(norm.ppf(p_lo) - norm.ppf(0.6))


# ----- records ----------------------------------------------------------------------------------
def test_stage_records_survive_the_store_and_an_old_store_gains_the_column(tmp_path):
    """A store written before multi-stage procedures has no ``certs.detail`` column: opening
    it adds one (its rows read back with no stages), and a cascade's stages round-trip."""
    import sqlite3

    from bench.certify.records import RunCard
    from bench.store.database import DB_NAME, Store

    store = Store(tmp_path)
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("ALTER TABLE certs DROP COLUMN detail")
    db.commit()
    db.close()
    store = Store(tmp_path)
    run = store.open_run(RunCard(identity={"method": "test", "dataset": "digits"}))
    proc = cascade([Slab(1.0, [0.3, 0.6], [1, 2, 0]), Slab(0.5, [0.9], [2, 0])], [1.0, 0.5],
                   n=500)
    cert = proc.certify(X, 4, 2)
    plain = CohenFixedN(Slab(1.0, [0.5], [0, 1]), 3, spec(n=50)).certify(X, 5, 1)
    store.add_certs(run, [cert, plain])
    back = {c.idx: c for c in store.certs(run)}
    assert back[4].stages == cert.stages and back[4].outcome == cert.outcome
    assert back[4].stage == cert.stage == 1
    assert back[5].stages == [] and back[5].stage == -1


# ----- what a run's records say ---------------------------------------------------------------
def record_stream_phases(monkeypatch) -> set[int]:
    """The phase of every noise stream created from now on (the harness's and any classifier's
    own: all of them are :class:`NoiseStream`)."""
    seen: set[int] = set()
    init = NoiseStream.__init__

    def spy(self, shape, device, seed, index, phase):
        seen.add(int(phase))
        init(self, shape, device, seed, index, phase)

    monkeypatch.setattr(NoiseStream, "__init__", spy)
    return seen


def test_a_cascade_run_records_its_true_samples_and_every_stream(cli, tmp_path, monkeypatch):
    """p0 = 0.99 makes images fall through to later scales: the summary's samples per image
    are what they drew (N0 + N per visited stage), its max_samples K (N0 + N), and the card
    lists every stream the run drew from (stages 1 and 2 draw from phases 10, 11, 20, 21)."""
    import csv
    import json

    seen = record_stream_phases(monkeypatch)
    code, out, err = cli("run", "--method", "multiscale", "--dataset", "digits", "--subset",
                         "dev", "--n", "60", "--n0", "10", "--max-images", "3", "--quiet",
                         "--param", "p0=0.99", "--results", tmp_path)
    assert code == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    with open(folder / "certs.tsv", newline="") as f:
        visited = [len(json.loads(r["stages"])) for r in csv.DictReader(f, delimiter="\t")]
    assert max(visited) > 1  # some image drew more than one stage's N0 + N
    summary = json.loads((folder / "summary.json").read_text())
    cost = summary["cost_per_image"]
    assert cost["samples"] == pytest.approx(70 * sum(visited) / len(visited)) != 70
    assert cost["max_samples"] == 3 * 70
    listed = {s["phase"] for s in summary["procedure"]["noise_streams"]}
    assert listed == {0, 1, 10, 11, 20, 21} and seen <= listed and {10, 11} <= seen
