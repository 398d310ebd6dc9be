"""Leaderboard files: Markdown + static HTML, three kinds of rows, working links, escaping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markupsafe import escape as escape_html

from bench.certify import metrics, stats
from bench.certify.records import Certificate, RunCard
from bench.registry.entries import load_registry
from bench.reports import leaderboard, style
from bench.reports.curves import step_curve
from bench.reports.table import Row
from bench.store.database import Store
from tests.conftest import ROOT
from tests.test_table import GRID as TABLE_GRID
from tests.test_table import _run_row

XSS_NAME = "<script>window.__xss=1</script>"
XSS_DESC = '<img src=x onerror="window.__xss=2">'
GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


def _card(run_id, method, sigma, n=1000, kind=None):
    ident = {"method": method, "dataset": "digits", "sigma": sigma, "n0": 100, "n": n, "m": 1,
             "alpha": 0.001, "subset": "dev", "subset_size": 6}
    if kind:
        ident["kind"] = kind
    return RunCard.from_json({"run_id": run_id, "identity": ident, "radius_grid": GRID})


def _certs(radii, passes=1100):
    """Images with radius > 0 are certified correct (class 1), the others wrong (class 0)."""
    return [Certificate(prediction=1 if r > 0 else 0, radius=r, p_lower=0.9, top_class=1,
                        count=900, n0=100, n=1000, classifier_passes=passes,
                        diffusion_passes=0, seconds=0.25, idx=i, label=1, device="cpu")
            for i, r in enumerate(radii)]


def make_board(tmp_path: Path) -> Path:
    """A store with two reproduced sigmas, a claimed run named with markup, a run at another
    budget, plus the shipped registry and an extra entry whose description is markup."""
    store = Store(tmp_path / "results")
    store.open_run(_card("aaaa00000001", "gaussian", 0.25))
    store.add_certs("aaaa00000001", _certs([0.1, 0.3, 0.6, 0.0, 0.7, 0.2]))
    store.open_run(_card("aaaa00000002", "gaussian", 0.5))
    store.add_certs("aaaa00000002", _certs([0.9, 1.3, 0.0, 0.0, 0.4, 1.1]))
    store.open_run(_card("cccc00000001", XSS_NAME, 0.25, kind="claimed"))
    store.add_certs("cccc00000001", _certs([0.2, 0.2, 0.0, 0.8, 0.3, 0.5], passes=-1))
    store.open_run(_card("bbbb00000001", "gaussian", 0.25, n=200))
    store.add_certs("bbbb00000001", _certs([0.1, 0.1, 0.1, 0.0, 0.0, 0.0]))
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "methods:\n  evil-reported:\n    description: '" + XSS_DESC + "'\n    reported:\n"
        "      - {dataset: digits, sigma: 0.25, N: 1000, accuracy: {0.0: 90.0, 0.5: 40.0},"
        " source: 'a paper <b>bold</b>'}\n"
        "    paper: {url: 'javascript:window.__xss=3'}\n")
    registry = load_registry(ROOT / "registry.yaml", extra=[extra])
    out = tmp_path / "board"
    leaderboard.build(store, registry, out)
    store.close()
    return out


def test_files_links_and_kinds(tmp_path):
    out = make_board(tmp_path)
    for name in ("index.html", "digits.html", "digits.md", "cifar10.html", "imagenet.md",
                 "README.md"):
        assert (out / name).is_file(), name
    html = (out / "digits.html").read_text()
    # Every relative link of the page resolves to a copied file (card and TSV per run).
    hrefs = re.findall(r'href="([^"#]+)"', html)
    run_links = [h for h in hrefs if h.startswith("runs/")]
    assert len(run_links) == 2 * 4
    for href in hrefs:
        if not href.startswith(("data:", "https:")):
            assert (out / href).is_file(), href
    assert sorted(p.name for p in (out / "runs").iterdir())[0].startswith(
        "claimed-_script_window.__xss_1_script_-digits")
    tsv = (out / "runs" / "gaussian-digits-sigma0.25-aaaa00000001" / "certs.tsv").read_text()
    assert tsv.splitlines()[0].startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
    # Three kinds, visibly different (row classes and badges).
    for kind in ("reproduced", "claimed", "reported"):
        assert f'class="kind-{kind}"' in html
    assert html.count("<svg") >= 3  # one plot per comparison group plus the envelope
    assert "cdn" not in html.lower() and "<script src" not in html


def test_same_compute_sections_and_rank_within_group(tmp_path):
    html = (make_board(tmp_path) / "digits.html").read_text()
    sections = re.findall(r"Same compute: ([\d,]+) predictions per image", html)
    assert sections == ["200", "1,000"]
    # The N=200 run is alone in its group: rank 1 there, ranked against nothing else.
    n200 = html.split("Same compute: 200")[1].split("Same compute: 1,000")[0]
    assert n200.count('class="kind-reproduced"') == 1 and '<td data-sort="1">1</td>' in n200
    # In the N=1,000 group: two sigmas and the claimed run on the same six images; no
    # paired sign test on six images is significant, so all three share rank 1.
    n1000 = html.split("Same compute: 1,000")[1].split("Best over sigma")[0]
    ranks = re.findall(r'<td data-sort="(\d+)"[^>]*>(\d+=?)</td>', n1000)
    assert ranks[:3] == [("1", "1=")] * 3
    assert "best over sigma per radius" in html.lower()
    assert "share a rank" in html and "ranked by point estimate only" in html


def test_intervals_are_in_the_cell_text_not_only_on_hover(tmp_path):
    html = (make_board(tmp_path) / "digits.html").read_text()
    # gaussian sigma 0.25 at r=0: 5 of 6 images certified correct (radius > 0).
    lo, hi = metrics.sample_interval(5, 6)
    cell = f'<span class="val">83.3</span><span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>'
    assert cell in html
    assert 'class="best tied"' in html and '<span class="tie">=</span>' in html


def _scored(name, scores, **kw):
    """A run row whose image i is certified at exactly the first scores[i] grid radii."""
    radii = [[0.0, 0.1, 0.3, 0.6, 0.8, 1.2][k] for k in scores]
    return _run_row(name, radii, [int(k > 0) for k in scores], **kw)


def test_shared_ranks_follow_the_top_row_of_each_rank():
    grid = list(TABLE_GRID)
    a = _scored("a-run", [5] * 40)
    b = _scored("b-run", [5] * 35 + [4] * 5)  # 5 images worse than A: p = 2/32, not < 0.05
    c = _scored("c-run", [5] * 30 + [4] * 10)  # 10 worse than A (p ~ 0.002); 5 worse than B
    d = _scored("d-run", [2] * 40)
    e = _scored("e-run", [2] * 39 + [1])
    ordered = sorted([e, d, c, b, a], key=lambda r: -leaderboard.rank_score(r, grid))
    assert [r.method for r in ordered] == ["a", "b", "c", "d", "e"]
    assert leaderboard.rank_test(a, b, grid).p_value == pytest.approx(2 / 32)
    assert not leaderboard.rank_test(b, c, grid).significant()  # yet C is not tied with A
    ranks = leaderboard.shared_ranks(ordered, grid)
    assert ranks == [1, 1, 3, 4, 4]
    assert leaderboard.rank_labels(ranks) == ["1=", "1=", "3", "4=", "4="]
    # Image scores average to the rank score.
    assert sum(leaderboard.image_scores(c, grid)) / 40 == pytest.approx(
        leaderboard.rank_score(c, grid))


def _issue_21_rows():
    """Issue 21's 100 paired images: A certified at r = 1.2 on images 0-19, B at r = 0.2 on
    images 20-79, neither certified elsewhere. On the grid 0, 0.25, ..., 1: scores 1.0 and 0.6."""
    a = _run_row("a-run", [1.2] * 20 + [0.0] * 80, [1] * 20 + [0] * 80)
    b = _run_row("b-run", [0.0] * 20 + [0.2] * 60 + [0.0] * 20, [0] * 20 + [1] * 60 + [0] * 20)
    return a, b


def test_ranks_test_the_mean_score_they_order_by():
    """B wins on 60 images to 20 (a sign test would call B significantly worse, p = 8.6e-6),
    yet A leads on the mean score that orders them; the test of that mean (exact sign-flip,
    p = 0.0996) does not separate them: they share rank 1."""
    grid = list(TABLE_GRID)
    a, b = _issue_21_rows()
    assert leaderboard.rank_score(a, grid) == pytest.approx(1.0)
    assert leaderboard.rank_score(b, grid) == pytest.approx(0.6)
    test = leaderboard.rank_test(a, b, grid)
    assert test.p_value == pytest.approx(0.0996, abs=1e-4) and test.mean_difference > 0
    assert (test.wins_a, test.wins_b) == (20, 60)
    assert leaderboard.shared_ranks([a, b], grid) == [1, 1]


def test_issue_21_scenario_shares_rank_one_on_the_page(tmp_path):
    store = Store(tmp_path / "results")
    for run_id, sigma, radii in (("aaaa00000021", 0.5, [1.2] * 20 + [0.0] * 80),
                                 ("bbbb00000021", 0.25, [0.0] * 20 + [0.2] * 60 + [0.0] * 20)):
        card = _card(run_id, "gaussian", sigma)
        card.identity["subset_size"] = 100
        store.open_run(card)
        store.add_certs(run_id, _certs(radii))
    leaderboard.build(store, load_registry(ROOT / "registry.yaml"), tmp_path / "site")
    html = (tmp_path / "site" / "digits.html").read_text()
    runs = html.split("Same compute: 1,000")[1].split("Best over sigma")[0]
    assert re.findall(r'<td data-sort="(\d+)"[^>]*>(\d+=?)</td>', runs)[:2] == [("1", "1=")] * 2
    assert "sign-flip" in (tmp_path / "site" / "digits.md").read_text()


def test_a_row_is_never_ranked_below_a_row_it_beats():
    """Whatever order the rows come in, a significant difference in the lower row's favour
    never gives it a worse rank."""
    grid = list(TABLE_GRID)
    high, low = _scored("h-run", [5] * 10), _scored("l-run", [0] * 10)
    assert leaderboard.rank_test(low, high, grid).significant()
    assert leaderboard.shared_ranks([low, high], grid) == [1, 1]
    assert leaderboard.shared_ranks([high, low], grid) == [1, 2]


def test_reported_rows_share_a_rank_only_on_an_equal_score():
    grid = list(TABLE_GRID)

    def rep(v):
        return Row(kind="reported", method="p", dataset="digits", sigma=0.25, n0=100, n=1000,
                   m=1, alpha=0.001, subset="paper", subset_size=None, images=None,
                   accuracy={0.25: v})

    ordered = [rep(0.5), rep(0.5), rep(0.49)]
    assert leaderboard.shared_ranks(ordered, grid) == [1, 1, 3]


def test_markup_is_escaped_in_html_and_markdown(tmp_path):
    out = make_board(tmp_path)
    html = (out / "digits.html").read_text()
    assert XSS_NAME not in html and XSS_DESC not in html and "<b>bold</b>" not in html
    assert "javascript:" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    # The only <script> element is the sorting code.
    assert html.count("<script") == 1


def test_reported_rows_of_the_papers_appear(tmp_path):
    out = make_board(tmp_path)
    cifar = (out / "cifar10.html").read_text()
    for method in ("gaussian", "smoothadv", "macer", "consistency", "smoothmix", "boosting"):
        assert f">{method}</a><span" in cifar, method
    assert "DiffSmooth (Zhang et al. 2023, " in cifar and ") Table 1" in cifar
    assert 'href="https://arxiv.org/abs/1902.02918"' in cifar  # reported rows link the paper
    imagenet = (out / "imagenet.md").read_text()
    assert "Table 2" in imagenet and "| boosting" in imagenet
    index = (out / "index.html").read_text()
    assert 'href="digits.html"' in index and 'href="cifar10.html"' in index


def test_cli_writes_the_leaderboard(cli, tmp_path):
    code, out, err = cli("leaderboard", "--results", tmp_path / "empty", "--out",
                         tmp_path / "lb")
    assert code == 0, err
    assert "index.html" in out and (tmp_path / "lb" / "cifar10.html").is_file()
    assert not (tmp_path / "empty").exists()  # reading never creates a store


# ----- plots, greyed cells, merged rows, sources, index -------------------------------------------
def _path_vertices(d):
    """Vertices of an SVG path made of ``M x,y L x,y ...`` segments."""
    return [[tuple(float(v) for v in xy.split(",")) for xy in re.findall(r"-?[\d.]+,-?[\d.]+", seg)]
            for seg in re.findall(r"M[^M]+", d)]


def test_run_curve_path_is_the_exact_step_curve_scaled():
    radii = [0.1, 0.3, 0.3, 0.0, 0.62, 0.2, 0.45]
    row = _run_row("a-run", radii, [1, 1, 1, 0, 1, 0, 1], sigma=0.25, n=1000)
    top = leaderboard.max_radius_of(row)
    assert top == pytest.approx(stats.max_radius(0.25, 1000, 0.001))
    group = leaderboard.build_group([row], GRID, "t")
    d = re.search(r'<path class="curve curve-reproduced"[^>]* d="([^"]+)"',
                  str(group.plot)).group(1)
    xs, ys = step_curve(row.per_image.values(), total=len(radii), until=top)
    axes = leaderboard.Axes(rmax=leaderboard.plot_rmax(GRID, [leaderboard.row_curve(
        row, GRID, "a", "#000", "", top)]))
    expected = [(round(axes.x(x), 2), round(axes.y(y), 2)) for x, y in zip(xs, ys, strict=True)]
    assert _path_vertices(d) == [expected]
    # The curve steps: every other segment is vertical (the drop just after an image's radius).
    assert all(a[0] == b[0] or a[1] == b[1] for a, b in zip(expected, expected[1:], strict=False))
    # The run's maximum certifiable radius is marked, and the legend names it.
    assert 'class="max-radius"' in str(group.plot)
    assert group.legend[0]["max_radius"] == f"{top:.3f}"
    # The SVG scales with the page: a viewBox, width 100%, no fixed pixel width.
    assert 'viewBox="0 0 ' in str(group.plot) and 'width="100%"' in str(group.plot)


def test_reported_values_hold_until_the_next_grid_radius():
    segs = leaderboard.grid_steps({0.0: 0.8, 0.25: 0.6, 0.75: 0.2}, [0.0, 0.25, 0.5, 0.75, 1.0])
    # 0.6 holds to 0.5, where the row has no value: the line stops and resumes at 0.75.
    assert segs == [[(0.0, 0.8), (0.25, 0.8), (0.25, 0.6), (0.5, 0.6)], [(0.75, 0.2), (1.0, 0.2)]]


def _reported(source, acc, setting="", method="dds", sigma="best"):
    return Row(kind="reported", method=method, dataset="cifar10", sigma=sigma, n0=100,
               n=100000, m=1, alpha=None, subset="paper", subset_size=None, images=None,
               accuracy=acc, source=source, setting=setting,
               paper_url="https://arxiv.org/abs/2206.10550")


def test_duplicate_reported_rows_are_merged_citing_both_sources():
    a = _reported("Paper X Table 1", {0.0: 0.79, 0.25: 0.62, 2.25: 0.022}, "standard, ResNet")
    b = _reported("Paper X Table 6", {0.0: 0.79, 0.25: 0.62}, "standard, N = 100,000")
    c = _reported("Paper X Table 1", {0.0: 0.79, 0.25: 0.61}, "other")  # other numbers
    d = _reported("Paper X Table 6", {0.0: 0.79, 0.25: 0.62}, method="gaussian")  # other method
    out = leaderboard.merge_duplicates([a, b, c, d])
    assert len(out) == 3 and out[1] is c and out[2] is d
    merged = out[0]
    assert isinstance(merged, leaderboard.MergedRow)
    assert merged.sources == (("Paper X Table 1", "standard, ResNet"),
                              ("Paper X Table 6", "standard, N = 100,000"))
    assert merged.accuracy == {0.0: 0.79, 0.25: 0.62, 2.25: 0.022}
    view = leaderboard.build_group(out[:2], [0.0, 0.25, 2.25], "t").rows
    merged_view = next(v for v in view if len(v["sources"]) == 2)
    assert [str(s["html"]) for s in merged_view["sources"]] == [
        '<a href="https://arxiv.org/abs/2206.10550">Paper X Table 1</a>',
        '<a href="https://arxiv.org/abs/2206.10550">Paper X Table 6</a>']


def test_cifar10_dds_rows_of_two_tables_appear_once(tmp_path):
    html = (make_board(tmp_path) / "cifar10.html").read_text()
    rows = re.findall(r'<tr class="kind-reported"[^>]*>.*?</tr>', html, re.S)
    standard = [r for r in rows if "DDS (Standard)" in r and "reimplemented" in r]
    assert len(standard) == 1
    assert "Table 1" in standard[0] and "Table 6" in standard[0]
    assert not [r for r in rows if "DDS (Standard), N = 100,000</div>" in r]


def test_cells_past_the_maximum_certifiable_radius_are_greyed_with_a_reason(tmp_path):
    html = (make_board(tmp_path) / "digits.html").read_text()
    top = stats.max_radius(0.25, 1000, 0.001)  # gaussian sigma 0.25, N = 1,000: 0.616
    row = re.search(r'<tr class="kind-reproduced" data-run="aaaa00000001">.*?</tr>', html,
                    re.S).group(0)
    cells = re.findall(r'<td data-sort="[^"]*"( title="[^"]*")?( class="[^"]*")?><span '
                       r'class="val">', row)
    greyed = [i for i, (_, cls) in enumerate(cells) if "beyond" in cls]
    assert greyed == [i for i, r in enumerate(GRID) if r > top] == [3, 4, 5, 6, 7, 8]
    assert (f'title="beyond this run&#39;s maximum certifiable radius {top:.3f} (N = 1,000, '
            'alpha = 0.001): no image can be certified here') in row
    assert "beyond" not in cells[2][1]  # r = 0.5 < 0.616 is not greyed
    # Reported rows with sigma, N and alpha known are greyed too (Cohen's sigma = 0.12).
    cifar = (make_board(tmp_path / "2") / "cifar10.html").read_text()
    assert "beyond this run&#39;s maximum certifiable radius 0.457 (N = 100,000" in cifar


def test_legend_labels_are_unique_and_colours_fixed_per_method():
    rows = [_run_row("diffsmooth-a", [0.3, 0.1], [1, 1], m=m, n=n) for m, n in
            ((5, 2000), (10, 1000), (20, 500))]
    assert leaderboard.legend_labels(rows) == [
        "diffsmooth sigma=0.25 m=5", "diffsmooth sigma=0.25 m=10", "diffsmooth sigma=0.25 m=20"]
    same = [_run_row("ndc-a", [0.3], [1]), _run_row("ndc-b", [0.3], [1])]
    same[1].setting = "variant=ap"
    labels = leaderboard.legend_labels(same)
    assert labels == ["ndc sigma=0.25", "ndc sigma=0.25 variant=ap"]
    dashes = leaderboard.dash_patterns(same)
    assert dashes[0] != dashes[1]  # same colour (method), so another dash
    colors = style.method_colors(f"m{i:02d}" for i in range(len(style.PALETTE)))
    assert len(set(colors.values())) == len(style.PALETTE) >= 16
    assert style.method_colors(["b", "a"]) == {"a": style.PALETTE[0], "b": style.PALETTE[1]}


def test_a_method_has_its_plot_colour_on_the_leaderboard():
    """One colour rule (bench.reports.style): the registry's methods first, as bench plot."""
    registry = load_registry(ROOT / "registry.yaml")
    rows = [_run_row("gaussian-a", [0.3, 0.1], [1, 1])]
    page = leaderboard.dataset_page(rows, "digits", registry=registry)
    want = style.method_colors(["gaussian"], sorted(registry.methods))["gaussian"]
    assert want != style.PALETTE[0]  # not merely the first colour of a one-method page
    assert f"'color': '{want}'" in str(page)


def test_descriptions_once_per_method_and_sources_in_the_repository(tmp_path):
    out = make_board(tmp_path)
    cifar = (out / "cifar10.html").read_text()
    registry = load_registry(ROOT / "registry.yaml")
    for name in ("gaussian", "dds", "diffsmooth"):
        desc = str(escape_html(registry.methods[name].description))
        assert cifar.count(desc) == 1, name
    assert cifar.count('class="method-desc"') == len(set(re.findall(
        r'data-method="([^"]+)"', cifar)))
    for path in out.glob("*.*"):
        text = path.read_text()
        assert "algorithms.md" not in text and "shared/" not in text, path.name
    # Table references link what they cite: a paper (arXiv id) or the released logs.
    assert '<a href="https://arxiv.org/abs/2308.14333">arXiv:2308.14333</a>) Table 1' in cifar
    assert '<a href="https://github.com/locuslab/smoothing">' in cifar
    for entry in registry.methods.values():
        for rep in entry.reported:
            assert "algorithms.md" not in rep["source"] and "../" not in rep["source"]
    assert leaderboard.clean_source("X Table 2 (algorithms.md B.2)") == "X Table 2"
    html = str(leaderboard.source_html("T (see ../shared/spec/a.md)", "https://e.org/p"))
    assert html == '<a href="https://e.org/p">T</a>'


def test_index_has_headlines_date_and_version(tmp_path):
    index = (make_board(tmp_path) / "index.html").read_text()
    import bench

    assert f"certbench <span class=\"version\">{bench.__version__}</span>" in index
    assert re.search(r'<time datetime="\d{4}-\d{2}-\d{2}">', index)
    for ds in ("digits", "cifar10", "imagenet"):
        assert f'<table class="headline" data-dataset="{ds}">' in index
    digits = index.split('data-dataset="digits"')[1].split("</table>")[0]
    assert "<th>r=0.25</th><th>r=0.5</th><th>r=1</th><th>ACR</th>" in digits
    assert 'href="digits.html#group-' in digits
    assert leaderboard.key_radii([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]) == [0.5, 1.0, 2.0]
