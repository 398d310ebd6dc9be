"""Accuracy against compute: the Pareto front, the compute needed to reach a target, the FLOPs
of a run, and their rendering in ``plot --compute`` and on the leaderboard."""

from __future__ import annotations

import math
import re

import pytest

from bench.certify.records import Certificate, RunCard, RunSummary
from bench.errors import ConfigError
from bench.registry.entries import load_registry
from bench.reports import compute, leaderboard
from bench.store.database import Store
from tests.conftest import ROOT
from tests.test_leaderboard import XSS_NAME

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


# ----- the Pareto front -------------------------------------------------------------------------
def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.7), (4.0, 0.9), (1.0, 0.5),
              (0.5, 0.1), (5.0, 0.9), (4.0, 0.2)]
    front = compute.pareto_front(points)
    # (2, 0.4) and (4, 0.2): cheaper-and-better points exist; (3, 0.7): (2, 0.7) is cheaper
    # at the same accuracy; (5, 0.9): (4, 0.9). Both copies of (1, 0.5) stay.
    assert front == [6, 0, 5, 2, 4]
    for i, (x, y) in enumerate(points):
        dominated = any(ox <= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points)
        assert (i in front) == (not dominated)
    assert compute.pareto_front([]) == []


# ----- points from runs -------------------------------------------------------------------------
def _card(run_id, method, sigma, n, *, m=1, params=None, compute_block=None, alpha=0.001):
    ident = {"method": method, "dataset": "digits", "sigma": sigma, "n0": 10, "n": n, "m": m,
             "alpha": alpha, "subset": "dev", "subset_size": 4, "seed": 0,
             "params": params or {}}
    data = {"run_id": run_id, "identity": ident, "radius_grid": GRID}
    if compute_block is not None:
        data["compute"] = compute_block
    return RunCard.from_json(data)


def _certs(radii, n):
    """Radius > 0: certified correct; 0: wrong."""
    return [Certificate(prediction=1 if r > 0 else 0, radius=r, p_lower=0.9, top_class=1,
                        count=n, n0=10, n=n, classifier_passes=10 + n, idx=i, label=1,
                        device="cpu") for i, r in enumerate(radii)]


def _summary(run_id, method, sigma, n, radii, **kw):
    return RunSummary.from_certs(_card(run_id, method, sigma, n, **kw), _certs(radii, n))


RUNS = [  # method, sigma, N, per-image radii (4 images)
    ("gaussian", 0.25, 90, [0.1, 0.3, 0.0, 0.0]),
    ("gaussian", 0.25, 990, [0.3, 0.6, 0.3, 0.0]),
    ("gaussian", 0.5, 990, [0.6, 0.9, 0.0, 0.0]),
    ("dds", 0.25, 90, [0.3, 0.3, 0.3, 0.0]),
    ("dds", 0.25, 990, [0.6, 0.6, 0.6, 0.6]),
]


def _summaries(flops_per_prediction=None):
    block = ({"flops_per_prediction": flops_per_prediction, "roles": {}, "method": "x"}
             if flops_per_prediction is not None else None)
    return [_summary(f"run{i:08d}", m, s, n, r, compute_block=block)
            for i, (m, s, n, r) in enumerate(RUNS)]


def test_flops_per_image_from_the_card_else_predictions_on_the_axis():
    s = _summary("r1", "gaussian", 0.25, 90, [0.1], compute_block={"flops_per_prediction": 2e6})
    assert compute.flops_per_image(s) == pytest.approx(2e6 * 100)  # (N0 + N) x per prediction
    assert compute.flops_per_image(_summary("r2", "gaussian", 0.25, 90, [0.1])) is None
    with_flops = compute.build_view([compute.point_of(s, [0.25]) for s in _summaries(3.0)],
                                    [0.25])
    assert with_flops.unit == compute.FLOPS
    assert sorted({p.cost for p in with_flops.points}) == [300.0, 3000.0]
    # one run without FLOPs: the whole axis is predictions (samples x m), never a mix
    mixed = [*_summaries(3.0)[:-1], _summaries()[-1]]
    view = compute.build_view([compute.point_of(s, [0.25]) for s in mixed], [0.25])
    assert view.unit == compute.PREDICTIONS
    assert sorted({p.cost for p in view.points}) == [100.0, 1000.0]


def test_curves_group_budgets_of_one_configuration_and_fronts_per_metric():
    view = compute.views_of(_summaries(3.0), [0.25, 0.5])[0]
    assert [(c.label, [p.n for p in c.points]) for c in view.curves] == [
        ("dds sigma=0.25", [90, 990]), ("gaussian sigma=0.25", [90, 990]),
        ("gaussian sigma=0.5", [990])]
    acc = {(p.method, p.sigma, p.n): p.metrics for p in view.points}
    assert acc[("gaussian", 0.25, 990)][0.25] == 0.75  # radii 0.3, 0.6, 0.3 reach 0.25
    assert acc[("dds", 0.25, 990)][compute.ACR] == pytest.approx(0.6)
    front = {m: [(p.method, p.n) for p in pts] for m, pts in view.fronts.items()}
    assert front[0.25] == [("dds", 90), ("dds", 990)]
    # at r = 0.5 both runs at 100 samples certify nothing: equal points, both kept
    assert sorted(front[0.5]) == [("dds", 90), ("dds", 990), ("gaussian", 90)]
    # runs on other images or another alpha are another view, never one axis
    other = _summary("zzz", "dds", 0.25, 90, [0.3, 0.3, 0.3], alpha=0.01)
    assert len(compute.comparable_sets(
        [compute.point_of(s, [0.25]) for s in [*_summaries(), other]])) == 2
    with pytest.raises(ConfigError, match="different image sets or alphas"):
        compute.build_view([compute.point_of(s, [0.25]) for s in [*_summaries(), other]],
                           [0.25])


# ----- the compute needed to reach a target ------------------------------------------------------
def test_reach_table_finds_the_cheapest_run_of_each_method():
    view = compute.views_of(_summaries(3.0), [0.25, 0.5])[0]
    targets = compute.parse_targets("75@0.25,0.5@0.5,100@0.5")
    assert targets == [compute.Target(0.75, 0.25), compute.Target(0.5, 0.5),
                       compute.Target(1.0, 0.5)]
    rows = {(r["target"], r["method"]): r for r in
            compute.reach_rows(view, compute.reach_table(view.points, targets))}
    assert rows[("75% at r=0.25", "dds")]["cost"] == "300"  # N = 90: 3 of 4 at 0.3
    assert rows[("75% at r=0.25", "gaussian")]["how"] == "sigma=0.25, N=990"
    # gaussian reaches 50% at r = 0.5 only at sigma 0.5 (0.6, 0.9): any sigma counts
    assert rows[("50% at r=0.5", "gaussian")]["how"] == "sigma=0.5, N=990"
    assert rows[("50% at r=0.5", "dds")]["how"] == "sigma=0.25, N=990"
    miss = rows[("100% at r=0.5", "gaussian")]
    assert not miss["reached"] and miss["cost"] == "not reached"
    assert miss["how"] == "best 50% (sigma=0.5, N=990)"
    assert rows[("100% at r=0.5", "dds")]["reached"]
    # the default targets: 90% of the best reached, down to a multiple of 10%
    assert compute.default_targets(view) == [compute.Target(0.9, 0.25),
                                             compute.Target(0.9, 0.5)]
    for bad in ("80", "80@x", "0@0.5", "120@0.5", "50@-1"):
        with pytest.raises(ConfigError, match="--reach"):
            compute.parse_targets(bad)


# ----- rendering ---------------------------------------------------------------------------------
def test_plot_compute_figure_draws_curves_and_fronts_on_a_log_axis():
    pytest.importorskip("matplotlib")
    from bench.reports import plot

    view = compute.views_of(_summaries(3.0), [0.25, 0.5])[0]
    fig = plot.compute_figure(view, known_methods=["dds", "gaussian"])
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    assert {ax.get_xscale() for ax in fig.axes if ax.get_visible()} == {"log"}
    curve = lines["compute:r=0.25:gaussian sigma=0.25"]
    assert list(curve.get_xdata()) == [300.0, 3000.0]
    assert list(curve.get_ydata()) == [25.0, 75.0]
    front = lines["pareto:ACR"]
    assert list(front.get_xdata()) == [p.cost for p in view.fronts[compute.ACR]]
    assert any("Pareto front" in t.get_text() for lg in fig.legends for t in lg.get_texts())


def _store_with_sweep(root):
    store = Store(root)
    block = {"flops_per_prediction": 3.0, "roles": {}, "method": "x"}
    for i, (m, s, n, radii) in enumerate(RUNS):
        method = XSS_NAME if m == "dds" else m
        card = _card(f"abcd{i:08d}", method, s, n, compute_block=block)
        store.open_run(card)
        store.add_certs(card.run_id, _certs(radii, n))
    return store


def test_plot_compute_cli_writes_the_figure_and_prints_the_reach_table(cli, tmp_path):
    pytest.importorskip("matplotlib")
    _store_with_sweep(tmp_path / "res").close()
    out = tmp_path / "fig.svg"
    code, text, err = cli("plot", "--compute", "--dataset", "digits", "--results",
                          tmp_path / "res", "--radii", "0.25,0.5", "--reach", "75@0.25",
                          "--out", out)
    assert code == 0, err
    assert out.read_text().lstrip().startswith("<?xml")
    assert "FLOPs per image each method needs" in text
    assert re.search(r"75% at r=0.25\s+gaussian\s+3e\+03\s+sigma=0.25, N=990", text), text
    code, _, err = cli("plot", "--dataset", "digits", "--results", tmp_path / "res",
                       "--reach", "75@0.25", "--out", out)
    assert code != 0 and "apply to --compute" in err
    one = Store(tmp_path / "one")
    card = _card("single000001", "gaussian", 0.25, 90)
    one.open_run(card)
    one.add_certs(card.run_id, _certs([0.1, 0.2], 90))
    one.close()
    code, _, err = cli("plot", "--compute", "--dataset", "digits", "--results", tmp_path / "one",
                       "--out", out)
    assert code != 0 and "two budgets or more" in err and "bench sweep" in err


def test_leaderboard_compute_section_svg_table_and_markdown(tmp_path):
    store = _store_with_sweep(tmp_path / "res")
    registry = load_registry(ROOT / "registry.yaml")
    leaderboard.build(store, registry, tmp_path / "site")
    store.close()
    html = (tmp_path / "site" / "digits.html").read_text()
    section = re.search(r'<section class="compute".*?</section>', html, re.S).group(0)
    assert section.count('class="compute-plot"') == 4  # r = 0.25, 0.5, 1 and ACR
    assert section.count('<g class="pareto">') == 4
    assert XSS_NAME not in html and "&lt;script&gt;" in section  # the method name is escaped
    assert "FLOPs per image to reach a certified accuracy" in section
    # the front circles sit on the front's points: at r = 0.25, dds (escaped) at 300 and 3,000
    first = section.split('class="compute-plot"')[1]
    assert first.count('class="front-point"') == 2
    md = (tmp_path / "site" / "digits.md").read_text()
    assert "## FLOPs per image to reach a certified accuracy" in md
    assert "| 90% at r=0.25 |" in md and "sigma=0.25, N=990" in md
    assert "<script>" not in md


def test_no_compute_section_without_a_configuration_at_two_budgets(tmp_path):
    store = Store(tmp_path / "res")
    for i, sigma in enumerate((0.25, 0.5)):
        card = _card(f"ffff{i:08d}", "gaussian", sigma, 90)
        store.open_run(card)
        store.add_certs(card.run_id, _certs([0.1, 0.6], 90))
    leaderboard.build(store, load_registry(ROOT / "registry.yaml"), tmp_path / "site")
    store.close()
    assert 'class="compute"' not in (tmp_path / "site" / "digits.html").read_text()
    assert "to reach a certified accuracy" not in (tmp_path / "site" / "digits.md").read_text()


def test_reporting_side_stays_free_of_torch():
    import subprocess
    import sys

    code = ("import sys; import bench.reports.compute, bench.reports.compute_svg; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    assert math.isfinite(1.0)
