"""``table --radii/--columns/--format long`` and ``bench.load_results`` on a real small store.

The store: gaussian on digits at two sigmas, 12 images, N = 300 (made once for this module).
Expected numbers are counted here from the store's certificates, not through bench.reports.table.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pandas as pd
import pytest

from bench.certify import metrics
from bench.cli import main
from bench.store.database import DB_NAME, Store
from tests.conftest import ROOT

SIGMAS = (0.25, 0.5)
OFF_GRID = 0.3  # not on the digits grid (steps of 0.25)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        for sigma in SIGMAS:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(["run", "--method", "gaussian", "--dataset", "digits", "--n", "300",
                             "--n0", "20", "--max-images", "12", "--sigma", str(sigma),
                             "--results", str(results), "--quiet"])
            assert code == 0, out.getvalue()
    return results


@pytest.fixture(scope="module")
def stored(store_dir):
    """run_id -> (sigma, summary, certificates), read straight from the store."""
    s = Store(store_dir)
    try:
        return {run.run_id: (float(run.card.identity["sigma"]), s.summary(run.run_id),
                             s.certs(run.run_id)) for run in s.runs_of("digits")}
    finally:
        s.close()


def _exact(certs, r: float) -> float:
    """Certified accuracy at r counted by hand: correct with radius >= r, over all images."""
    return sum(1 for c in certs if c.correct and c.radius >= r) / len(certs)


def _table(cli, store_dir, *args):
    code, out, err = cli("table", "--dataset", "digits", "--results", store_dir,
                         "--no-reported", *args)
    assert code == 0, err
    return out


def _md_header(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split("|")]


def _md_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


# ----- --radii and --columns ---------------------------------------------------------------------
def test_radii_gives_those_columns_with_exact_values_off_the_grid(cli, store_dir, stored):
    assert len(stored) == 2
    # The off-grid radius must tell an exact count from a grid neighbour's value.
    assert any(_exact(certs, OFF_GRID) not in (_exact(certs, 0.25), _exact(certs, 0.5))
               for _, _, certs in stored.values())
    text = _table(cli, store_dir, "--radii", f"0,{OFF_GRID}", "--columns", "method,sigma,acr")
    assert _md_header(text) == ["method", "sigma", "r=0", "r=0.3", "ACR"]
    cells = {row[1]: row for row in _md_rows(text) if row[0] == "gaussian"}
    for sigma, _, certs in stored.values():
        row = cells[f"{sigma:g}"]
        for col, r in ((2, 0.0), (3, OFF_GRID)):
            k = sum(1 for c in certs if c.correct and c.radius >= r)
            lo, hi = metrics.sample_interval(k, len(certs))
            assert row[col].replace("*", "").replace("=", "").split(" [")[0] \
                == f"{100 * k / len(certs):.1f}"
            assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in row[col]
    df = pd.read_csv(io.StringIO(_table(cli, store_dir, "--radii", f"0,{OFF_GRID}",
                                        "--columns", "method,sigma,run,acr", "--format", "csv")))
    assert list(df.columns) == [
        "method", "sigma", "sigma_label", "run_id",
        *(f"{v}@{r:g}" for v in ("acc", "ci_low", "ci_high", "mark", "p_vs_best")
          for r in (0, OFF_GRID)),
        "acr", "acr_mark", "acr_p_vs_best"]
    for run_id, (_, summary, certs) in stored.items():
        line = df[df["run_id"] == run_id].iloc[0]
        assert line[f"acc@{OFF_GRID:g}"] == pytest.approx(_exact(certs, OFF_GRID))
        assert line["acc@0"] == pytest.approx(summary.accuracy[0.0])
        assert line["acr"] == pytest.approx(summary.acr)
    # The envelope is taken over the exact values too.
    env = df[df["sigma_label"].str.startswith("best of")].iloc[0]
    assert env[f"acc@{OFF_GRID:g}"] == pytest.approx(
        max(_exact(c, OFF_GRID) for _, _, c in stored.values()))


def test_columns_shows_only_those(cli, store_dir):
    text = _table(cli, store_dir, "--columns", "method,sigma,acr")
    for header in (_md_header(block) for block in text.split("###")[1:]):
        assert header[:2] == ["method", "sigma"] and header[-1] == "ACR"
        assert all(h.startswith("r=") for h in header[2:-1]) and len(header) == 2 + 9 + 1
    assert "| kind" not in text and "N0" not in text and "device" not in text
    # Order as given; radii before the first metric column; source split from device.
    text = _table(cli, store_dir, "--radii", "0.5", "--columns",
                  "sigma,run,seconds,kind,device,source,setting,method")
    assert _md_header(text) == ["sigma", "run", "kind", "setting", "method", "r=0.5", "s/img",
                                "device", "source"]


def test_unknown_column_is_one_line_with_the_valid_names(cli, store_dir):
    code, out, err = cli("table", "--results", store_dir, "--columns", "method,sigm")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown column 'sigm'" in err and "did you mean 'sigma'?" in err
    from bench.commands.table import COLUMN_NAMES
    from bench.reports import table

    assert "valid names: " + ", ".join(table.COLUMNS) in err
    assert COLUMN_NAMES == tuple(table.COLUMNS)  # --help lists what the table knows
    code, _, err = cli("table", "--results", store_dir, "--radii", "0,x")
    assert code == 2 and "'x' is not a number" in err and err.count("\n") == 1
    code, _, err = cli("table", "--results", store_dir, "--radii", "auto")
    assert code == 2 and "auto" in err


def test_reported_rows_show_na_off_their_radii(cli, store_dir):
    code, out, err = cli("table", "--dataset", "cifar10", "--results", store_dir, "--radii",
                         "0.25,0.3", "--columns", "method,kind", "--no-ci")
    assert code == 0, err
    rows = [r for r in _md_rows(out) if r[1] == "reported"]
    assert rows and all(r[3] == "n/a" for r in rows) and any(r[2] != "n/a" for r in rows)


# ----- LaTeX alignment ---------------------------------------------------------------------------
def test_latex_right_aligns_numeric_columns(cli, store_dir):
    text = _table(cli, store_dir, "--format", "latex", "--radii", f"0,{OFF_GRID}",
                  "--columns", "method,kind,sigma,n,subset,acr,seconds,device")
    assert text.count(r"\begin{tabular}{llrrlrrrrl}") == 2  # the runs, then the envelope
    assert r"\toprule" in text and r"\textbf{" in text
    default = _table(cli, store_dir, "--format", "latex")
    spec = default.split(r"\begin{tabular}{")[1].split("}")[0]
    header = default.split("\\toprule\n")[1].split("\\\\")[0].split("&")
    aligned = dict(zip((h.strip() for h in header), spec, strict=True))
    assert {h for h, a in aligned.items() if a == "l"} == {
        "method", "kind", "subset", "device / source"}
    assert all(aligned[h] == "r" for h in ("sigma", "N0", "N", "m", "alpha", "r=0", "r=0.25",
                                           "ACR", r"abstain \%", "passes/img", "s/img"))


# ----- --format long -----------------------------------------------------------------------------
@pytest.mark.parametrize("radii", [None, f"0,0.25,{OFF_GRID}"])
def test_long_format_is_tidy_and_equals_the_wide_table(cli, store_dir, stored, radii):
    extra = ("--radii", radii) if radii else ()
    long = pd.read_csv(io.StringIO(_table(cli, store_dir, "--format", "long", *extra)))
    wide = pd.read_csv(io.StringIO(_table(cli, store_dir, "--format", "csv", *extra)))
    grid = sorted({float(c[4:]) for c in wide.columns if c.startswith("acc@")})
    assert len(long) == len(wide) * len(grid)  # two runs and their envelope, x radii
    assert {"dataset", "kind", "method", "sigma", "n0", "n", "m", "alpha", "subset", "images",
            "budget", "certification", "run_id", "radius", "certified_accuracy", "ci_low",
            "ci_high", "mark", "p_vs_best", "acr"} <= set(long.columns)
    assert set(long["certification"]) == {"fixed"}
    assert sorted(set(long["radius"])) == grid
    for _, line in wide.iterrows():
        mine = long[(long["kind"] == line["kind"]) & (long["sigma_label"] ==
                                                      line["sigma_label"])]
        assert len(mine) == len(grid)
        for _, cell in mine.iterrows():
            r = f"@{cell['radius']:g}"
            assert cell["certified_accuracy"] == pytest.approx(line["acc" + r])
            for name in ("ci_low", "ci_high", "p_vs_best"):  # wide: the long name @ the radius
                assert (pd.isna(cell[name]) and pd.isna(line[name + r])) or \
                    cell[name] == pytest.approx(line[name + r])
            assert str(cell["mark"]) == str(line["mark" + r])
    if radii:
        for run_id, (_, _, certs) in stored.items():
            value = long[(long["run_id"] == run_id) & (long["radius"] == OFF_GRID)]
            assert value["certified_accuracy"].iloc[0] == pytest.approx(_exact(certs, OFF_GRID))
    assert _table(cli, store_dir, "--format", "long", *extra).count("\n") == 1 + len(long)


# ----- load_results ------------------------------------------------------------------------------
def test_load_results_runs_equal_the_store_summaries(store_dir, stored):
    from bench import load_results

    df = load_results(store_dir)
    assert len(df) == 2 and set(df["run_id"]) == set(stored)
    for run_id, (sigma, summary, _) in stored.items():
        line = df[df["run_id"] == run_id].iloc[0]
        ident = summary.card.identity
        assert (line["method"], line["dataset"], line["kind"]) == ("gaussian", "digits",
                                                                   "reproduced")
        assert line["sigma"] == sigma and line["images"] == summary.images == 12
        assert (line["n0"], line["n"], line["m"], line["alpha"]) == (
            ident["n0"], ident["n"], ident["m"], ident["alpha"])
        assert line["acr"] == pytest.approx(summary.acr)
        assert line["abstain"] == pytest.approx(summary.abstain)
        assert line["certification"] == "fixed" and line["budget"] == 300
        assert line["seconds"] == pytest.approx(summary.seconds)
        for r, value in summary.accuracy.items():
            assert line[f"acc@{r:g}"] == pytest.approx(value)
    long = load_results(store_dir, "digits", long=True, sigma=0.5)
    (sigma, summary, _), = [v for v in stored.values() if v[0] == 0.5]
    assert len(long) == len(summary.accuracy) and set(long["sigma"]) == {0.5}
    for _, cell in long.iterrows():
        assert cell["certified_accuracy"] == pytest.approx(summary.accuracy[cell["radius"]])
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(
            summary.interval[cell["radius"]])
    # Radii off the grid: exact from the per-image radii.
    off = load_results(store_dir, radii=[OFF_GRID, 0.0])
    assert [c for c in off.columns if c.startswith("acc@")] == ["acc@0", "acc@0.3"]
    for run_id, (_, _, certs) in stored.items():
        assert off.loc[off["run_id"] == run_id, "acc@0.3"].iloc[0] == pytest.approx(
            _exact(certs, OFF_GRID))


def test_the_table_csv_reads_as_load_results(cli, store_dir):
    """One naming: ``table --format csv`` has every column of ``load_results`` under the same
    name, in the same units (fractions), with the same values for each run."""
    from bench import load_results

    api = load_results(store_dir)
    csv = pd.read_csv(io.StringIO(_table(cli, store_dir, "--format", "csv")))
    assert [c for c in csv.columns if c in api.columns] == list(api.columns)
    runs = csv[csv["kind"] == "reproduced"].set_index("run_id")
    assert set(runs.index) == set(api["run_id"])
    for _, line in api.iterrows():
        mine = runs.loc[line["run_id"]]
        for col in api.columns:
            if col in ("run_id", "setting"):  # setting: the table reads the registry
                continue
            want, got = line[col], mine[col]
            if pd.isna(want) or (isinstance(want, str) and want == ""):
                assert pd.isna(got) or got == "", col
            elif isinstance(want, str):
                assert got == want, col
            else:
                assert float(got) == pytest.approx(float(want)), col


def test_load_results_certificates_equal_the_stored_ones(store_dir, stored):
    from bench import load_results

    df = load_results(store_dir, level="certificates")
    assert len(df) == sum(len(c) for _, _, c in stored.values()) == 24
    assert {"run_id", "method", "dataset", "sigma", "idx", "label", "predict", "radius",
            "correct", "n0", "n", "p_lower", "count", "time", "outcome"} <= set(df.columns)
    assert "path" not in df.columns  # digits images have no files
    for run_id, (sigma, _, certs) in stored.items():
        mine = df[df["run_id"] == run_id].sort_values("idx")
        assert list(mine["idx"]) == [c.idx for c in certs]
        assert list(mine["radius"]) == [c.radius for c in certs]  # full precision
        assert list(mine["correct"]) == [c.correct for c in certs]
        assert list(mine["predict"]) == [c.prediction for c in certs]
        assert list(mine["label"]) == [c.label for c in certs]
        assert list(mine["p_lower"]) == [c.p_lower for c in certs]
        assert list(mine["count"]) == [c.count for c in certs]
        assert list(mine["time"]) == [c.seconds for c in certs]
        assert set(mine["sigma"]) == {sigma}
    one = load_results(store_dir, level="certificates", method="gaussian", sigma=[0.25])
    assert set(one["sigma"]) == {0.25} and len(one) == 12
    empty = load_results(store_dir, "cifar10", level="certificates")
    assert empty.empty and "radius" in empty.columns
    assert load_results(store_dir, method="macer").empty


def test_load_results_needs_a_store_and_is_exported_lazily(tmp_path):
    import bench
    from bench.reports import frames

    with pytest.raises(FileNotFoundError, match="no results store"):
        frames.load_results(tmp_path / "none")
    assert not (tmp_path / "none" / DB_NAME).exists()
    with pytest.raises(ValueError, match="level"):
        frames.load_results(tmp_path, level="images")
    assert bench.load_results is frames.load_results and "load_results" in bench.__all__
    code = "import sys, bench; assert 'pandas' not in sys.modules; bench.load_results"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
