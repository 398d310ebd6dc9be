"""README and docs/ rows that link a committed leaderboard run
(``leaderboards/runs/<run>/card.json``) say what that run's card says (fast), and the run's command
still produces its certificates with the same run id (slow: the first two images of each).
README's tables repeat docs/ rows cell for cell, and every relative link of README, docs/ and
CONTRIBUTING.md resolves (fast)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from bench.running.plan import RunOptions
from bench.running.runner import run
from tests.conftest import ROOT

LINK = re.compile(r"\[(\w{12})\]\((?:\.\./)?leaderboards/runs/([^)]+)/card\.json\)")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "CONTRIBUTING.md"]


def linked_rows() -> list[tuple[list[str], str]]:
    rows = []
    for line in (line for page in PAGES for line in page.read_text().splitlines()):
        match = LINK.search(line)
        if line.startswith("| ") and match:
            rows.append(([c.strip() for c in line.strip().strip("|").split("|")],
                         match.group(2)))
    return rows


ROWS = linked_rows()


def slugs(page) -> set[str]:
    """GitHub's heading anchors of a Markdown page (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def card(folder: str) -> dict:
    return json.loads((ROOT / "leaderboards" / "runs" / folder / "card.json").read_text())


def test_readme_links_runs():
    assert len(ROWS) >= 10


def test_readme_tables_repeat_docs_rows():
    """README's headline tables are copies of docs/ rows, which the tests here and in
    test_cli.py check against the runs."""
    docs = {line.replace("](../", "](") for page in DOCS for line in page.read_text().splitlines()}
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    assert len(rows) >= 10 and [row for row in rows if row not in docs] == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in slugs(dest), f"{page.name}: {target}"


@pytest.mark.parametrize(("cells", "folder"), ROWS, ids=[f for _, f in ROWS])
def test_readme_row_is_the_committed_runs_card(cells, folder):
    summary = card(folder)
    ca = summary["metrics"]["certified_accuracy"]
    assert cells[1:6] == [f"{100 * ca[r]:.1f}" for r in ("0", "0.25", "0.5", "0.75", "1")]
    assert cells[6] == f"{summary['metrics']['acr']:.3f}"
    assert cells[7] == f"{100 * summary['metrics']['abstain_rate']:.1f}%"
    assert cells[8] == f"{summary['metrics']['max_certifiable_radius']:.3f}"
    cost = summary["cost_per_image"]
    assert cells[9] == f"{cost['diffusion_passes']:,.0f} + {cost['classifier_passes']:,.0f}"
    assert folder.endswith(summary["run_id"])


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted({f for _, f in ROWS}))
def test_readme_run_reproduces_its_first_images(tmp_path, folder):
    """Rebuild the command from the card: same run id, same certificates for images 0 and 1."""
    ident = card(folder)["identity"]
    cascade = ident.get("procedure") == "cascade"
    result = run(RunOptions(
        method=ident["method"], dataset=ident["dataset"], subset=ident["subset"],
        sigma=None if cascade else ident["sigma"], n0=ident["n0"], n=ident["n"],
        alpha=ident["alpha"], seed=ident["seed"], max_images=2, results=tmp_path,
        params={k: v for k, v in ident["params"].items() if v is not None}, progress=False))
    assert folder.endswith(result.run_id)
    with open(ROOT / "leaderboards" / "runs" / folder / "certs.tsv", newline="") as f:
        committed = list(csv.DictReader(f, delimiter="\t"))[:2]
    with open(result.folder / "certs.tsv", newline="") as f:
        fresh = list(csv.DictReader(f, delimiter="\t"))
    keep = ("idx", "label", "predict", "radius", "correct", "top_class", "count", "p_lower")
    assert [[r[k] for k in keep] for r in fresh] == [[r[k] for k in keep] for r in committed]
