"""A radius grid that fits the run (issue 16, item 3): ``--radii`` and ``--radii auto``.

The grid is recorded in the card's extra (``radius_grid``, and ``radius_grid_source`` when it
is not the dataset's), never in the identity: the run id stays the same with any grid.
"""

from __future__ import annotations

import json
import math

import pytest

from bench.certify import stats
from bench.data import specs
from bench.errors import ConfigError
from bench.reports import table
from bench.running.plan import RunOptions, prepare
from tests.test_core_seams import README_RUN_ID

QUICK = ["--subset", "dev", "--n", "50", "--n0", "10", "--max-images", "2", "--quiet"]


def _summary(results) -> dict:
    (path,) = (results / "runs").glob("*/summary.json")
    return json.loads(path.read_text())


def test_radii_are_recorded_and_certified_at(cli, tmp_path):
    code, out, err = cli("run", *QUICK, "--radii", "0,0.1,0.2", "--results", tmp_path)
    assert code == 0, err
    summary = _summary(tmp_path)
    assert summary["radius_grid"] == [0.0, 0.1, 0.2]
    assert summary["radius_grid_source"] == "--radii"
    assert list(summary["metrics"]["certified_accuracy"]) == ["0", "0.1", "0.2"]
    assert list(summary["metrics"]["certified_accuracy_ci95_over_images"]) == ["0", "0.1", "0.2"]
    assert "radius_grid" not in summary["identity"]
    # Without --radii, the same command is the same run (the grid is not the identity).
    code, out2, err = cli("run", *QUICK, "--results", tmp_path / "plain")
    assert code == 0, err
    plain = _summary(tmp_path / "plain")
    assert plain["identity"] == summary["identity"]
    assert plain["radius_grid"] == list(specs.radius_grid("digits"))
    assert "radius_grid_source" not in plain  # default cards are unchanged
    run_id = out.split(" run ")[1].split()[0]
    assert run_id == out2.split(" run ")[1].split()[0]


def test_auto_grid_ends_at_or_below_the_max_certifiable_radius(cli, tmp_path):
    code, out, err = cli("run", *QUICK, "--radii", "auto", "--results", tmp_path)
    assert code == 0, err
    summary = _summary(tmp_path)
    grid = summary["radius_grid"]
    top = summary["metrics"]["max_certifiable_radius"]
    assert math.isclose(top, stats.max_radius(0.25, 50, 0.001))
    assert summary["radius_grid_source"] == "auto"
    assert grid[0] == 0 and grid[-1] <= top and 5 <= len(grid) <= specs.AUTO_POINTS
    assert grid == sorted(set(grid))
    assert list(summary["metrics"]["certified_accuracy"]) == [f"{r:g}" for r in grid]


def test_resuming_with_another_grid_regrids_the_stored_card(cli, tmp_path):
    assert cli("run", *QUICK, "--results", tmp_path)[0] == 0
    code, out, err = cli("run", *QUICK, "--radii", "0,0.15", "--results", tmp_path)
    assert code == 0, err
    assert "0 new" in out  # resumed, nothing recertified
    summary = _summary(tmp_path)
    assert summary["radius_grid"] == [0.0, 0.15]
    code, out, err = cli("table", "--results", tmp_path, "--no-reported", "--no-ci")
    assert code == 0, err
    assert "r=0.15" in out and "r=0.5" not in out


def test_default_run_id_is_unchanged_by_any_grid(tmp_path):
    for radii in (None, (0.0, 0.5), "auto"):
        prep = prepare(RunOptions(results=tmp_path, progress=False, radii=radii))
        assert prep.card.run_id == README_RUN_ID
    default = prepare(RunOptions(results=tmp_path, progress=False)).card
    assert "radius_grid_source" not in default.extra
    assert default.extra["radius_grid"] == list(specs.radius_grid("digits"))


def test_table_of_runs_on_different_grids_is_the_union(cli, tmp_path):
    assert cli("run", *QUICK, "--radii", "0,0.1,0.2", "--results", tmp_path)[0] == 0
    assert cli("run", *QUICK, "--sigma", "0.5", "--radii", "0,0.3",
               "--results", tmp_path)[0] == 0
    code, out, err = cli("table", "--results", tmp_path, "--no-reported", "--no-ci")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert [c for c in cols if c.startswith("r=")] == ["r=0", "r=0.1", "r=0.2", "r=0.3"]
    body = [line for line in out.splitlines()
            if line.startswith("| gaussian") and "best of" not in line]  # not the envelope
    assert len(body) == 2
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        grid_cells = cells[cols.index("r=0"):cols.index("r=0.3") + 1]
        assert grid_cells.count("-") == (2 if cells[2] == "0.5" else 1), line
    code, out, err = cli("table", "--results", tmp_path, "--no-reported", "--format", "csv")
    assert code == 0, err


def test_grid_of_keeps_the_dataset_grid_for_default_rows():
    def row(accuracy, own):
        return table.Row(kind="reproduced", method="m", dataset="digits", sigma=0.25, n0=1,
                         n=1, m=1, alpha=0.001, subset="dev", subset_size=1, images=1,
                         accuracy=accuracy, own_grid=own)

    default = dict.fromkeys(specs.radius_grid("digits"), 0.5)
    assert table.grid_of([row(default, False)]) == list(specs.radius_grid("digits"))
    own = row({0.0: 1.0, 0.1: 0.5}, True)
    assert table.grid_of([own]) == [0.0, 0.1]
    assert table.grid_of([own, row(default, False)]) == sorted({0.1, *default})


@pytest.mark.parametrize("value, message", [
    ("0,-0.5", "non-negative"),
    ("0,abc", "not a number"),
    ("0,0.25,0.250", "more than once"),
    (",".join(str(i / 10) for i in range(60)), "at most 50"),
    ("", "not a number"),
    ("0,nan", "non-negative"),
])
def test_bad_radii_are_one_line(cli, tmp_path, value, message):
    code, out, err = cli("run", *QUICK, "--radii", value, "--results", tmp_path)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_parse_and_auto_grid():
    assert specs.parse_radii("0.2, 0,0.1") == (0.0, 0.1, 0.2)
    assert specs.parse_radii("AUTO") == "auto"
    assert specs.auto_grid(2.25) == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
    assert specs.auto_grid(0.93) == tuple(i / 10 for i in range(10))
    assert specs.auto_grid(0.0) == (0.0,)
    for top in (0.05, 0.283, 1.0, 3.1, 4.0, 17.0):
        grid = specs.auto_grid(top)
        assert grid[0] == 0 and grid[-1] <= top and len(grid) <= specs.AUTO_POINTS
        assert len(grid) >= 5
    with pytest.raises(ConfigError):
        specs.check_radii(())
