"""Leaderboard files: Markdown + static HTML, three kinds of rows, working links, escaping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import leaderboard, metrics
from bench.records import Certificate, RunCard
from bench.registry import load_registry
from bench.store import Store
from bench.table import Row
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
    assert html.count("<svg") >= 3  # one plot per protocol group plus the envelope
    assert "cdn" not in html.lower() and "<script src" not in html


def test_same_compute_sections_and_rank_within_protocol(tmp_path):
    html = (make_board(tmp_path) / "digits.html").read_text()
    sections = re.findall(r"Same compute: ([\d,]+) predictions per image", html)
    assert sections == ["200", "1,000"]
    # The N=200 run is alone in its protocol: rank 1 there, ranked against nothing else.
    n200 = html.split("Same compute: 200")[1].split("Same compute: 1,000")[0]
    assert n200.count('class="kind-reproduced"') == 1 and '<td data-sort="1">1</td>' in n200
    # In the N=1,000 protocol: two sigmas and the claimed run on the same six images; no
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
        assert f"> {method}<span" in cifar, method
    assert "DiffSmooth (Zhang et al. 2023) Table 1" in cifar
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
