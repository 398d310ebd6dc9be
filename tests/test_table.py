"""Metrics and standardized tables on hand-made certificate sets (exact expected values)."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from scipy.stats import beta

from bench.certify import metrics
from bench.certify.records import Certificate, RunCard
from bench.reports import table
from bench.reports.frames import RUN_COLUMNS
from bench.reports.table import Row
from bench.store.database import Store

# Ten images: radii and correctness chosen so every number below can be counted by hand.
RADII = [0.0, 0.1, 0.3, 0.5, 0.5, 0.8, 1.2, 0.0, 0.9, 0.2]
CORRECT = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]  # the last three wrong (one of them abstained)
PREDICT = [3, 1, 4, 1, 5, 9, 2, -1, 7, 0]
GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_certified_accuracy_counts_correct_images_with_radius_at_least_r():
    ca = metrics.certified_accuracy(RADII, CORRECT, GRID)
    # r=0: 7 correct; r=0.25: 0.3,0.5,0.5,0.8,1.2; r=0.5: 0.5,0.5,0.8,1.2; r=0.75: 0.8,1.2; r=1: 1.2
    assert ca == {0.0: 0.7, 0.25: 0.5, 0.5: 0.4, 0.75: 0.2, 1.0: 0.1}
    # A radius just below a grid point never counts at it (no rounding up).
    assert metrics.certified_accuracy([0.2499999], [1], [0.25]) == {0.25: 0.0}
    assert [metrics.certified_count(RADII, CORRECT, r) for r in GRID] == [7, 5, 4, 2, 1]


def test_acr_and_abstain():
    # Wrong images contribute 0 even with a radius (0.9 and 0.2 are wrong predictions).
    assert metrics.average_certified_radius(RADII, CORRECT) == pytest.approx(3.4 / 10)
    assert metrics.abstain_rate(PREDICT) == pytest.approx(0.1)


def test_interval_is_exact_two_sided_clopper_pearson():
    lo, hi = metrics.sample_interval(7, 10)
    assert lo == pytest.approx(beta.ppf(0.025, 7, 4))
    assert hi == pytest.approx(beta.ppf(0.975, 8, 3))
    assert lo == pytest.approx(0.3475, abs=1e-4) and hi == pytest.approx(0.9333, abs=1e-4)
    assert metrics.sample_interval(0, 10)[0] == 0.0 and metrics.sample_interval(10, 10)[1] == 1.0
    lo, hi = metrics.sample_interval(500, 1000)
    assert hi - lo < 0.07  # ~ +-3.1 points at n = 1000
    assert all(math.isnan(v) for v in metrics.sample_interval(0, 0))
    with pytest.raises(ValueError):
        metrics.sample_interval(11, 10)


def test_envelope_is_the_best_value_per_radius():
    a = {0.0: 0.9, 0.5: 0.5, 1.0: 0.0}
    b = {0.0: 0.7, 0.5: 0.6, 1.0: 0.3, 1.5: 0.2}
    c = {0.0: float("nan"), 0.5: 0.55}
    assert metrics.envelope([a, b, c]) == {0.0: 0.9, 0.5: 0.6, 1.0: 0.3, 1.5: 0.2}
    assert metrics.envelope([]) == {}


def _card(run_id, sigma, alpha=0.001, n=1000, method="toy", kind=None, subset_size=10):
    ident = {"method": method, "dataset": "digits", "sigma": sigma, "n0": 100, "n": n, "m": 1,
             "alpha": alpha, "subset": "dev", "subset_size": subset_size}
    if kind:
        ident["kind"] = kind
    return RunCard.from_json({"run_id": run_id, "identity": ident, "radius_grid": list(GRID)})


def _certs(radii, correct, predict):
    """Certificates whose label makes each prediction right or wrong as ``correct`` says."""
    return [Certificate(prediction=p, radius=r, p_lower=0.9, top_class=p, count=900, n0=100,
                        n=1000, classifier_passes=1100, diffusion_passes=0, seconds=0.5, idx=i,
                        label=p if c else p + 1, device="cpu")
            for i, (r, c, p) in enumerate(zip(radii, correct, predict, strict=True))]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    # Two sigmas of one method, same group; a third run at another alpha (another group).
    s.open_run(_card("a", 0.25))
    s.add_certs("a", _certs(RADII, CORRECT, PREDICT))
    s.open_run(_card("b", 0.5))
    s.add_certs("b", _certs([r * 2 for r in RADII], [1, 1, 0, 0, 1, 1, 1, 0, 0, 0], PREDICT))
    s.open_run(_card("c", 0.25, alpha=0.01))
    s.add_certs("c", _certs([1.0] * 10, [1] * 10, [1] * 10))
    yield s
    s.close()


def test_rows_from_store_carry_metrics_interval_and_cost(store):
    rows = {r.run_id: r for r in table.rows_from_store(store)}
    a = rows["a"]
    assert a.kind == "reproduced" and a.images == 10 and a.budget == 1000
    assert a.accuracy[0.5] == 0.4 and a.acr == pytest.approx(0.34)
    assert a.interval[0.5] == metrics.sample_interval(4, 10)
    assert a.abstain == pytest.approx(0.1)
    assert a.classifier_passes == 1100 and a.seconds == 0.5 and a.device == "cpu"
    assert a.group == rows["b"].group != rows["c"].group


def test_groups_and_envelope(store):
    rows = table.rows_from_store(store)
    groups = table.group_rows(rows)
    assert sorted(len(g) for g in groups.values()) == [1, 2]
    pair = next(g for g in groups.values() if len(g) == 2)
    # sigma 0.5 doubles the radii: at r=1.0 it has 0.5 (x2: 1.0,1.6,2.4) -> 3/10 vs 1/10.
    assert max(row.accuracy[1.0] for row in pair) == pytest.approx(0.3)
    assert max(row.accuracy[0.0] for row in pair) == pytest.approx(0.7)
    env = table.envelopes(rows)
    assert len(env) == 1 and env[0].envelope_of == ("0.25", "0.5")
    b = next(r for r in rows if r.run_id == "b")
    a = next(r for r in rows if r.run_id == "a")
    assert env[0].accuracy == {r: max(a.accuracy[r], b.accuracy[r]) for r in GRID}
    assert env[0].interval == {} and env[0].acr is None  # no honest interval for a max


def test_markdown_marks_best_per_group_and_shows_intervals(store):
    text = table.render(table.rows_from_store(store), "markdown", GRID)
    lines = [ln for ln in text.splitlines() if ln.startswith("| toy")]
    assert len(lines) == 2 + 1 + 1  # the pair, the lone alpha=0.01 run, the envelope
    # The alpha=0.01 run is best in its own group (it is alone), 100% everywhere.
    lone = next(ln for ln in lines if "0.01" in ln)
    assert lone.count("**100.0**") == len(GRID)
    first = next(ln for ln in lines if "| 0.25 " in ln and "0.001" in ln)
    lo, hi = metrics.sample_interval(7, 10)
    assert f"**70.0** [{100 * lo:.1f}, {100 * hi:.1f}]" in first
    assert "Clopper-Pearson" in text and "best over sigma" in text


def test_latex_is_booktabs_with_textbf(store):
    text = table.render(table.rows_from_store(store), "latex", GRID)
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    assert r"\textbf{70.0}" in text and "\x02" not in text and "\x04" not in text
    assert r"{\scriptsize[" in text


def test_csv_has_numbers_and_interval_columns(store):
    df = pd.read_csv(io.StringIO(table.render(table.rows_from_store(store), "csv", GRID)))
    row = df[(df["sigma"] == 0.25) & (df["alpha"] == 0.001) & (df["kind"] == "reproduced")]
    assert float(row["acc@0.5"].iloc[0]) == pytest.approx(0.4)  # a fraction, as load_results
    assert float(row["ci_low@0.5"].iloc[0]) == pytest.approx(metrics.sample_interval(4, 10)[0])
    assert (df["kind"] == "reproduced envelope").sum() == 1


def test_reported_rows_from_registry_and_budget_filter():
    from bench.registry.entries import load_registry
    from tests.conftest import ROOT

    reg = load_registry(ROOT / "registry.yaml")
    rows = table.collect_rows(None, reg, "cifar10")
    assert rows and all(r.kind == "reported" and r.source for r in rows)
    gauss = [r for r in rows if r.method == "gaussian" and "Table 1" in r.source]
    assert len(gauss) == 1 and gauss[0].accuracy[0.5] == pytest.approx(0.428)
    assert {r.method for r in rows} >= {"smoothmix", "boosting", "macer"}
    assert all(r.budget == 10_000 for r in table.collect_rows(None, reg, "imagenet", 10_000))


def test_partial_runs_are_not_ranked_against_complete_ones(tmp_path):
    s = Store(tmp_path)
    s.open_run(_card("full", 0.25))
    s.add_certs("full", _certs(RADII, CORRECT, PREDICT))
    s.open_run(_card("part", 0.5))
    s.add_certs("part", _certs(RADII[:4], CORRECT[:4], PREDICT[:4]))
    rows = table.rows_from_store(s)
    s.close()
    assert len(table.group_rows(rows)) == 2
    part = next(r for r in rows if r.run_id == "part")
    assert part.subset_label == "dev (4/10)"


def test_row_cost_format():
    row = Row(kind="reproduced", method="m", dataset="digits", sigma=0.25, n0=1, n=2, m=1,
              alpha=0.1, subset="dev", subset_size=1, images=1, accuracy={},
              classifier_passes=5100.0, diffusion_passes=5100.0)
    assert table.format_cost(row) == "5,100 + 5,100 diff."


# ----- ties by paired exact tests, envelopes per configuration, requested budgets ------------
def _run_row(run_id, radii, correct, sigma=0.25, seed=0, n=1000, m=1, n0=100, requested=None,
             idx_offset=0, params=None):
    """A stored-run row from hand-made certificates (idx from ``idx_offset``)."""
    from bench.certify.records import RunSummary

    ident = {"method": run_id.split("-")[0], "dataset": "digits", "sigma": sigma, "n0": n0,
             "n": n, "m": m, "alpha": 0.001, "subset": "dev", "subset_size": len(radii),
             "seed": seed, "params": params or {}}
    extra = {"run_id": run_id, "radius_grid": list(GRID)}
    if requested is not None:
        extra["budget"] = {"predictions_per_image": n * m, "n0": n0, "n": n, "m": m,
                           "requested": requested}
    card = RunCard.from_json({"identity": ident, **extra})
    certs = _certs(radii, correct, [1] * len(radii))
    for c in certs:
        c.idx += idx_offset
    return table.row_from_summary(RunSummary.from_certs(card, certs))


def test_ten_images_100_vs_90_is_a_tie_not_a_sole_winner():
    a = _run_row("a-run", [0.3] * 10, [1] * 10)
    b = _run_row("b-run", [0.3] * 9 + [0.1], [1] * 10)
    assert a.accuracy[0.25] == 1.0 and b.accuracy[0.25] == 0.9 and a.group == b.group
    marks = table.cell_marks([a, b], GRID)
    assert marks[0][0.25] == table.Mark("best")
    assert marks[1][0.25].kind == "tied" and marks[1][0.25].p_value == 1.0
    assert marks[1]["acr"].kind == "tied"  # one image differs: sign test p = 1
    text = table.render([a, b], "markdown", GRID, envelope=False)
    b_line = next(ln for ln in text.splitlines() if ln.startswith("| b "))
    assert "**90.0**= [" in b_line
    assert "level 0.05" in text and "McNemar" in text
    latex = table.render([a, b], "latex", GRID, envelope=False)
    assert r"\textbf{90.0}=" in latex
    df = pd.read_csv(io.StringIO(table.render([a, b], "csv", GRID)))
    assert list(df["mark@0.25"]) == ["best", "tied"]
    assert df["p_vs_best@0.25"].iloc[1] == pytest.approx(1.0)


def test_a_significant_paired_difference_is_not_tied():
    # 80 images: A alone certified at r=0.25 on 50, B alone on 20, both on 0, neither on 10.
    a = _run_row("a-run", [0.3] * 50 + [0.1] * 20 + [0.0] * 10, [1] * 70 + [0] * 10)
    b = _run_row("b-run", [0.1] * 50 + [0.3] * 20 + [0.0] * 10, [1] * 70 + [0] * 10)
    marks = table.cell_marks([a, b], GRID)
    assert marks[0][0.25] == table.Mark("best") and 0.25 not in marks[1]
    assert table.paired_test(a, b, 0.25).p_value == pytest.approx(
        metrics.binomial_two_sided(20, 70))
    assert marks[1][0.0].kind == "best"  # at r = 0 both are certified on the same 70
    text = table.render([a, b], "markdown", GRID, envelope=False)
    b_line = next(ln for ln in text.splitlines() if ln.startswith("| b "))
    assert "| 25.0 [" in b_line  # plain: neither bold nor tied


def test_rows_on_other_images_or_without_per_image_data_are_never_tied():
    a = _run_row("a-run", [0.3] * 10, [1] * 10)
    other = _run_row("b-run", [0.3] * 9 + [0.1], [1] * 10, idx_offset=100)
    assert a.sample_key != other.sample_key and not table.paired(a, other)
    marks = table.cell_marks([a, other], GRID)  # forced into one group: still not paired
    assert marks[0][0.25].kind == "best" and 0.25 not in marks[1]
    reported = Row(kind="reported", method="p", dataset="digits", sigma=0.25, n0=100, n=1000,
                   m=1, alpha=0.001, subset="paper", subset_size=None, images=None,
                   accuracy={0.25: 0.95})
    marks = table.cell_marks([a, reported], GRID)
    assert marks[0][0.25].kind == "best" and 0.25 not in marks[1]


def test_envelope_only_over_sigma_of_one_configuration():
    s25 = _run_row("g-a", [0.3] * 5 + [0.0] * 5, [1] * 10, sigma=0.25, seed=0)
    s50 = _run_row("g-b", [0.6] * 3 + [0.0] * 7, [1] * 10, sigma=0.5, seed=0)
    lucky = _run_row("g-c", [0.6] * 9 + [0.0], [1] * 10, sigma=0.25, seed=1)
    env, notes = table.envelope_groups([s25, s50, lucky])
    assert len(env) == 1 and env[0].envelope_of == ("0.25", "0.5")
    # The seed-1 run (90% at r=0.5) is not maxed into the seed-0 envelope (30% at r=0.5).
    assert env[0].accuracy[0.5] == pytest.approx(0.3)
    assert len(notes) == 1 and "g-c" in notes[0] and "left out" in notes[0]
    text = table.render([s25, s50, lucky], "markdown", GRID)
    assert "Note: reproduced g sigma 0.25 (run g-c) left out" in text
    # Two runs at one sigma with the same seed and params (here another N0): no envelope.
    twin = _run_row("g-d", [0.6] * 9 + [0.0], [1] * 10, sigma=0.25, seed=0, n0=50)
    env, notes = table.envelope_groups([s25, s50, twin])
    assert env == [] and len(notes) == 1
    assert "no envelope" in notes[0] and "g-a" in notes[0] and "g-d" in notes[0]
    assert "% Note: no envelope" in table.render([s25, s50, twin], "latex", GRID)
    # Other params are another configuration too.
    other = _run_row("g-e", [0.6] * 9 + [0.0], [1] * 10, sigma=0.5, params={"t": 2})
    env, _ = table.envelope_groups([s25, s50, other])
    assert len(env) == 1 and env[0].accuracy[0.5] == pytest.approx(0.3)


def test_requested_budget_groups_runs_of_the_same_compute():
    from bench.certify.budget import tier

    dds = _run_row("dds-run", [0.3] * 10, [1] * 10, n=10_000, m=1)
    diffsmooth = _run_row("diffsmooth-run", [0.3] * 10, [1] * 10, n=3_333, m=3,
                          requested=10_000)
    assert diffsmooth.budget == 10_000 and dds.budget == 10_000
    assert dds.group == diffsmooth.group
    assert len(table.group_rows([dds, diffsmooth])) == 1
    assert "budget 10,000 predictions/image" in table.render([dds, diffsmooth], "markdown", GRID)
    # Without a requested budget (N given directly), the tier is N x m.
    plain = _run_row("diffsmooth-n", [0.3] * 10, [1] * 10, n=3_333, m=3)
    assert plain.budget == 9_999 and plain.group != dds.group
    card = {"identity": {"n": 3_333, "m": 3}, "budget": {"requested": 10_000}}
    assert tier(card) == 10_000
    assert tier({"identity": {"n": 3_333, "m": 3}, "budget": {"requested": None}}) == 9_999
    assert tier(RunCard.from_json({"identity": {"n": 500}})) == 500
    # Reported rows keep N x m.
    rep = Row(kind="reported", method="p", dataset="digits", sigma=0.25, n0=100, n=3_333, m=3,
              alpha=0.001, subset="paper", subset_size=None, images=None, accuracy={})
    assert rep.budget == 9_999


def test_acr_marks_test_the_mean_radius_not_the_count_of_images():
    """ACR is a mean radius: A's 1.2 on 10 images (ACR 0.12) against B's 0.2 on 40 others
    (0.08). B wins on 40 images to 10 (sign test p ~ 2e-5, which marked B plainly worse), but
    the mean difference is not significant (sign-flip test p ~ 0.3): B is tied with the best."""
    a = _run_row("a-run", [1.2] * 10 + [0.0] * 90, [1] * 10 + [0] * 90)
    b = _run_row("b-run", [0.0] * 10 + [0.2] * 40 + [0.0] * 50, [0] * 10 + [1] * 40 + [0] * 50)
    assert a.acr == pytest.approx(0.12) and b.acr == pytest.approx(0.08)
    test = table.paired_test(a, b, "acr")
    assert (test.wins_a, test.wins_b) == (10, 40) and 0.2 < test.p_value < 0.5
    marks = table.cell_marks([a, b], GRID)
    assert marks[0]["acr"] == table.Mark("best")
    assert marks[1]["acr"].kind == "tied" and marks[1]["acr"].p_value == test.p_value
    text = table.render([a, b], "markdown", GRID, envelope=False)
    assert "sign-flip permutation test of the mean for ACR" in text


def test_run_summary_keeps_per_image_data_out_of_its_json():
    from bench.certify.records import RunSummary

    card = _card("a", 0.25)
    summary = RunSummary.from_certs(card, _certs(RADII, CORRECT, PREDICT))
    assert summary.per_image[8] == (0.9, 0) and summary.per_image[5] == (0.8, 1)
    assert set(summary.to_json()) == {"run_id", "identity", "radius_grid", "images", "metrics",
                                      "cost_per_image"}
    assert "'per_image'" not in str(summary.to_json())


def test_paired_test_counts_only_correct_images_as_certified():
    # B predicts the wrong class on 8 of 20 images, with a radius: not certified there.
    a = _run_row("a-run", [0.3] * 20, [1] * 20)
    b = _run_row("b-run", [0.3] * 20, [1] * 12 + [0] * 8)
    t = table.paired_test(a, b, 0.25)
    assert (t.wins_a, t.wins_b) == (8, 0) and t.p_value == pytest.approx(2 / 256)
    marks = table.cell_marks([a, b], GRID)
    assert 0.25 not in marks[1] and "acr" not in marks[1]  # sign test: 8 to 0, p = 2/256


# ----- choosing radii and columns, LaTeX alignment, the long format ------------------------------
def test_with_radii_computes_off_grid_values_exactly():
    a = _run_row("a-run", RADII, CORRECT)
    reported = Row(kind="reported", method="p", dataset="digits", sigma=0.25, n0=100, n=1000,
                   m=1, alpha=0.001, subset="paper", subset_size=None, images=None,
                   accuracy={0.25: 0.6})
    ext, rep = table.with_radii([a, reported], [0.25, 0.3, 0.35, 1.2, 1.21])
    # Correct radii 0, 0.1, 0.3, 0.5, 0.5, 0.8, 1.2: at 0.3 five of ten, at 0.35 four, at 1.2
    # one (a radius equal to r counts), at 1.21 none; grid values are kept as they were.
    assert {r: ext.accuracy[r] for r in (0.3, 0.35, 1.2, 1.21)} == {
        0.3: 0.5, 0.35: 0.4, 1.2: 0.1, 1.21: 0.0}
    assert ext.accuracy[0.25] == a.accuracy[0.25] and a.accuracy.keys() == set(GRID)
    assert ext.interval[0.35] == metrics.sample_interval(4, 10)
    assert rep is reported  # no per-image data: nothing to compute
    text = table.render([ext, rep], "markdown", [0.3], envelope=False, missing="n/a")
    assert "| n/a " in text and "50.0" in text
    with pytest.raises(table.ConfigError, match="auto"):
        table.parse_table_radii("auto")
    assert table.parse_table_radii("0.5, 0,0.3") == [0.0, 0.3, 0.5]


def test_default_columns_are_the_table_of_before():
    assert table.headers([0.0, 0.5]) == [
        "method", "kind", "sigma", "N0", "N", "m", "alpha", "subset", "r=0", "r=0.5", "ACR",
        "abstain %", "passes/img", "s/img", "device / source"]
    assert table.headers([0.5], table.DEFAULT_COLUMNS) == table.headers([0.5])
    assert table.parse_columns(" Method,ACR,method ") == ("method", "acr")
    with pytest.raises(table.ConfigError, match=r"did you mean 'seconds'\?\); valid names: "):
        table.parse_columns("method,secnds")


def test_latex_right_aligns_numbers_and_left_aligns_text(store):
    text = table.render(table.rows_from_store(store), "latex", GRID)
    spec = "ll" + "rrrrr" + "l" + "r" * len(GRID) + "rrrr" + "l"
    assert text.count(r"\begin{tabular}{" + spec + "}") == 3  # two groups, one envelope
    row = next(ln for ln in text.splitlines() if ln.startswith(" toy") and "0.01" in ln)
    cells = row.removesuffix(r" \\").split(" & ")
    assert cells[2] == " 0.25" and cells[0].startswith(" toy ")  # sigma padded on the left
    text = table.render(table.rows_from_store(store), "latex", [0.5],
                        columns=["method", "sigma", "setting", "acr"])
    assert r"\begin{tabular}{lrlrr}" in text


def test_long_frame_has_one_line_per_row_and_radius(store):
    rows = table.rows_from_store(store)
    df = table.frame(rows, GRID, long=True)
    assert len(df) == len(rows) * len(GRID)
    a = df[df["run_id"] == "a"].set_index("radius")
    assert a.loc[0.5, "certified_accuracy"] == 0.4 and a.loc[0.5, "acr"] == pytest.approx(0.34)
    assert (a.loc[0.5, "ci_low"], a.loc[0.5, "ci_high"]) == metrics.sample_interval(4, 10)
    assert list(df.columns[:len(RUN_COLUMNS)]) == list(RUN_COLUMNS)  # load_results' names
    assert list(df.columns[len(RUN_COLUMNS):]) == list(table.LONG_VALUES)
    text = table.render([replace_row(rows[0], method="=cmd()")], "long", GRID, envelope=False)
    assert ",'=cmd()," in text  # text cells keep the CSV escape
    small = table.frame(rows, [0.5], columns=["method", "sigma"], long=True)
    assert list(small.columns) == ["method", "sigma", "sigma_label", *table.LONG_VALUES]


def test_envelope_keeps_the_certification_group():
    from dataclasses import replace

    s25 = replace(_run_row("g-a", [0.3] * 10, [1] * 10, sigma=0.25), certification="sequential")
    s50 = replace(_run_row("g-b", [0.6] * 10, [1] * 10, sigma=0.5), certification="sequential")
    (env,), _ = table.envelope_groups([s25, s50])
    assert env.certification == "sequential" and env.group == s25.group
    assert "sequential certification" in table.group_title(env)


def replace_row(row, **changes):
    from dataclasses import replace

    return replace(row, **changes)
