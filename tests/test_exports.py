"""Exported runs (``runs/<folder>/`` with a card and ``certs.tsv``, e.g. the committed
``leaderboards/``) read back as a results source by table, plot, protocols, leaderboard,
load_results and merge, every card checked against its run id; and exports that stay one row
per line whatever the image file names."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bench import load_results
from bench.cli import main
from bench.errors import StoreError
from tests.conftest import ROOT
from tests.test_imagefolder import run_tree

LEADERBOARDS = ROOT / "leaderboards"
BUDGET = "100"  # the committed digits runs of this budget: few rows, fast paired tests


def _committed_cards() -> dict[str, dict]:
    cards = [json.loads(p.read_text()) for p in (LEADERBOARDS / "runs").glob("*/card.json")]
    return {card["run_id"]: card for card in cards}


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """A store rebuilt by ``merge`` from the committed exports (which stay as they are)."""
    before = _digest(LEADERBOARDS / "runs")
    target = tmp_path_factory.mktemp("rebuilt") / "results"
    assert main(["merge", str(LEADERBOARDS), "--results", str(target)]) == 0
    assert _digest(LEADERBOARDS / "runs") == before
    return target


def test_load_results_reads_the_committed_runs_with_their_committed_numbers():
    runs = load_results(LEADERBOARDS).to_dict("records")
    cards = _committed_cards()
    assert sorted(r["run_id"] for r in runs) == sorted(cards)
    for run in runs:
        metrics = cards[run["run_id"]]["metrics"]
        assert run["images"] == cards[run["run_id"]]["images"]["certified"]
        assert run["acr"] == metrics["acr"]
        for radius, value in metrics["certified_accuracy"].items():
            assert run[f"acc@{radius}"] == value, (run["run_id"], radius)


def test_merge_rebuilds_the_store_with_the_committed_files(rebuilt):
    for folder in (LEADERBOARDS / "runs").iterdir():
        copy = rebuilt / "runs" / folder.name
        assert (copy / "certs.tsv").read_bytes() == (folder / "certs.tsv").read_bytes()
    assert load_results(rebuilt).equals(load_results(LEADERBOARDS))
    assert load_results(rebuilt, level="certificates").equals(
        load_results(LEADERBOARDS, level="certificates"))


def test_the_leaderboard_of_the_rebuilt_store_writes_the_committed_cards(cli, rebuilt, tmp_path):
    """Every card (its measured FLOPs included, issue 24) survives merge and export byte for
    byte: the committed runs can be rebuilt from their exports."""
    code, _, err = cli("leaderboard", "--results", rebuilt, "--out", tmp_path / "board")
    assert code == 0, err
    for folder in (LEADERBOARDS / "runs").iterdir():
        copy = tmp_path / "board" / "runs" / folder.name
        assert (copy / "card.json").read_bytes() == (folder / "card.json").read_bytes(), \
            folder.name
        assert (copy / "certs.tsv").read_bytes() == (folder / "certs.tsv").read_bytes()


def test_table_and_plot_read_the_committed_runs_as_the_rebuilt_store(cli, rebuilt, tmp_path):
    tables, figures = [], []
    for source in (LEADERBOARDS, rebuilt):
        code, out, err = cli("table", "--dataset", "digits", "--budget", BUDGET, "--format",
                             "csv", "--no-reported", "--results", source)
        assert code == 0, err
        tables.append(out)
        svg = tmp_path / f"{len(figures)}.svg"
        code, _, err = cli("plot", "--dataset", "digits", "--budget", BUDGET, "--out", svg,
                           "--results", source)
        assert code == 0, err
        figures.append(svg.read_bytes())
    assert tables[0] == tables[1] and tables[0].count("\n") > 2
    assert figures[0] == figures[1]


def _one_run(tmp_path: Path) -> Path:
    """A folder holding a copy of one committed (budget 100) run's exports."""
    src = next(p for p in sorted((LEADERBOARDS / "runs").iterdir())
               if json.loads((p / "card.json").read_text())["budget"]["n"] == int(BUDGET))
    shutil.copytree(src, tmp_path / "lb" / "runs" / src.name)
    return tmp_path / "lb"


def test_a_card_changed_after_the_run_is_refused_everywhere(cli, tmp_path):
    folder = _one_run(tmp_path)
    card_path = next(folder.rglob("card.json"))
    card = json.loads(card_path.read_text())
    assert cli("table", "--dataset", "digits", "--results", folder)[0] == 0
    card["identity"]["alpha"] = 0.01  # a weaker protocol presented under the run's id
    card_path.write_text(json.dumps(card, indent=2))
    for argv in (("table", "--dataset", "digits"),
                 ("plot", "--dataset", "digits", "--out", tmp_path / "x.pdf"),
                 ("protocols", "--dataset", "digits"),
                 ("leaderboard", "--out", tmp_path / "site"),
                 ("merge", folder)):
        results = tmp_path / "merged" if argv[0] == "merge" else folder
        code, out, err = cli(*argv, "--results", results)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert "hashes to run id" in lines[0] and card["run_id"] in lines[0], lines[0]
    assert not (tmp_path / "merged").exists() and not (tmp_path / "x.pdf").exists()
    with pytest.raises(StoreError, match="hashes to run id"):
        load_results(folder)


def test_file_names_with_tabs_and_newlines_keep_the_export_one_row_per_line(cli, tmp_path):
    from PIL import Image

    names = ["0/a\tb.png", "1/c\nd.png", "1/e\\tf.png"]
    for name in names:
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=40 * len(name)).save(tmp_path / "tree" / name)
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 0, err
    tsv = next((tmp_path / "res").rglob("certs.tsv"))
    lines = tsv.read_text().split("\n")[:-1]
    header = lines[0].split("\t")
    assert len(lines) == 1 + len(names)
    assert all(len(line.split("\t")) == len(header) for line in lines)
    # Read back from the exports alone, the names are the files' own.
    shutil.copytree(tmp_path / "res" / "runs", tmp_path / "exported" / "runs")
    certs = load_results(tmp_path / "exported", level="certificates")
    assert sorted(certs["path"]) == sorted(names)


def test_reading_a_missing_folder_creates_nothing(cli, tmp_path):
    typo = tmp_path / "typo"
    for argv in (("protocols",), ("table",),
                 ("plot", "--dataset", "digits", "--out", tmp_path / "x.pdf")):
        cli(*argv, "--results", typo)
        assert not typo.exists(), argv
    with pytest.raises(FileNotFoundError, match="no results store or exported runs"):
        load_results(typo)
    assert not typo.exists()
