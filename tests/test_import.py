"""Importing per-image TSVs as claimed results, including the DDS running-count repair."""

from __future__ import annotations

import csv
import json

import pytest

from bench.reports import table
from bench.store.database import Store
from bench.store.tsv_import import parse_time, radius_lower_bound, repair_correct

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
# (idx, label, predict, radius): 4 correct of 6, one abstention.
ROWS = [(0, 3, 3, 0.61), (20, 8, 8, 0.25), (40, 0, 5, 0.4), (60, 6, 6, 0.7),
        (80, 1, -1, 0.0), (100, 9, 9, 0.05)]


def write(path, correct, time="0:00:01.500000"):
    lines = [HEADER] + [f"{i}\t{y}\t{p}\t{r}\t{c}\t{time}\n"
                        for (i, y, p, r), c in zip(ROWS, correct, strict=True)]
    path.write_text("".join(lines))
    return path


def flags():
    return [int(p == y) for _, y, p, _ in ROWS]


def test_dds_running_count_is_detected_and_repaired(cli, tmp_path):
    running = []
    total = 0
    for f in flags():
        total += f
        running.append(total)  # 1 2 2 3 3 4: what the DDS reference code writes
    tsv = write(tmp_path / "dds.tsv", running)
    code, out, err = cli("import", "--tsv", tsv, "--method", "dds-claim", "--dataset",
                         "cifar10", "--sigma", 0.5, "--subset", "cohen500",
                         "--results", tmp_path / "res")
    assert code == 0, err
    assert "running count" in out and "recomputed correct = (predict == label)" in out
    store = Store(tmp_path / "res")
    (run,) = store.runs_of("cifar10")
    assert run.card.kind == "claimed"
    certs = store.certs(run.run_id)
    assert [c.correct for c in certs] == flags()
    assert [c.seconds for c in certs] == [1.5] * 6
    # The abstention is never correct and has radius 0.
    assert certs[4].prediction == -1 and certs[4].correct == 0
    (row,) = table.rows_from_store(store)
    store.close()
    # 0.25 as printed (2 decimals) only guarantees 0.245: not counted at r = 0.25.
    assert row.kind == "claimed" and row.accuracy[0.25] == pytest.approx(2 / 6)
    assert row.accuracy[0.5] == pytest.approx(2 / 6)
    folder = next((tmp_path / "res" / "runs").iterdir())
    assert folder.name.startswith("claimed-dds-claim-cifar10-sigma0.5-")
    with open(folder / "certs.tsv", newline="") as fh:
        exported = list(csv.DictReader(fh, delimiter="\t"))
    assert [int(r["correct"]) for r in exported] == flags()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["source"]["correct_column_repaired"].startswith("the 'correct' column is a")


def test_clean_file_is_imported_unchanged_and_reimport_is_idempotent(cli, tmp_path):
    tsv = write(tmp_path / "ok.tsv", flags(), time="2.25")
    args = ("import", "--tsv", tsv, "--method", "mine", "--dataset", "digits", "--sigma", 0.25,
            "--n", 5000, "--results", tmp_path)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "repaired" not in out and "imported 6 images as claimed run" in out
    code, out2, _ = cli(*args)
    assert code == 0
    store = Store(tmp_path)
    runs = store.runs_of()
    assert len(runs) == 1 and runs[0].images == 6
    assert runs[0].card.identity["n"] == 5000
    store.close()


@pytest.mark.parametrize(("text", "bound"), [
    ("0.500", 0.4995), ("0.5", 0.45), ("0.5004", 0.50035), ("5.00e-01", 0.4995),
    ("5e-01", 0.45), ("1.1", 1.05), ("2", 1.5), ("0.0004", 0.00035), ("0", 0.0), ("0.00", 0.0),
])
def test_radius_is_lowered_to_the_bottom_of_its_printed_precision(text, bound):
    assert radius_lower_bound(text) == pytest.approx(bound, abs=1e-15)
    assert radius_lower_bound(text) <= float(text)


def test_rounded_radius_never_certifies_a_grid_point_it_only_reaches_by_rounding(cli, tmp_path):
    # 0.500 may be a printed 0.4996: not certified at 0.5. 0.5004 and 5.004e-01 are at least
    # 0.50035; a full-precision repr loses less than its last digit and stays >= 0.5.
    radii = ["0.500", "0.5004", "5.004e-01", "0.5000000000000001", "0.5"]
    lines = [HEADER] + [f"{i}\t1\t1\t{r}\t1\t1.0\n" for i, r in enumerate(radii)]
    tsv = tmp_path / "rounded.tsv"
    tsv.write_text("".join(lines))
    code, out, err = cli("import", "--tsv", tsv, "--method", "rounded", "--dataset", "digits",
                         "--sigma", 0.25, "--results", tmp_path / "res")
    assert code == 0, err
    assert "lowered to the bottom of their printed precision" in out
    store = Store(tmp_path / "res")
    (run,) = store.runs_of("digits")
    certs = store.certs(run.run_id)
    (row,) = table.rows_from_store(store)
    store.close()
    got = [c.radius for c in certs]
    assert got[0] == pytest.approx(0.4995) and got[0] < 0.5
    assert got[1] == pytest.approx(0.50035) and got[2] == pytest.approx(0.50035)
    assert got[3] >= 0.5 and got[4] == pytest.approx(0.45)
    assert row.accuracy[0.5] == pytest.approx(3 / 5)
    assert "half a unit in its last printed digit" in run.card.extra["source"]["radius_guard"]


def test_wrong_flags_are_recomputed_and_reported():
    labels = [1, 2, 3]
    preds = [1, 0, 3]
    fixed, note = repair_correct(labels, preds, [1, 1, 1])
    assert fixed == [1, 0, 1] and "disagrees" in note and "1 rows" in note
    fixed, note = repair_correct(labels, preds, [1, 0, 1])
    assert note == ""
    _, note = repair_correct(labels, preds, [1, 1, 2])
    assert "running count" in note
    # A running count that never exceeds 1 is still recognised (only the first is correct).
    fixed, note = repair_correct([1, 2, 3], [1, 0, 0], [1, 1, 1])
    assert fixed == [1, 0, 0] and "running count" in note
    _, note = repair_correct(labels, preds, [1, 5, 1])
    assert "not a 0/1 flag" in note


def test_time_formats():
    assert parse_time("0:00:02.345678") == pytest.approx(2.345678)
    assert parse_time("1:02:03") == 3723
    assert parse_time("1 day, 0:00:01") == 86401
    assert parse_time("0.75") == 0.75
    with pytest.raises(ValueError):
        parse_time("soon")


def test_import_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\n0\t1\t1\n")
    code, _, err = cli("import", "--tsv", bad, "--method", "m", "--dataset", "digits",
                       "--sigma", 0.25, "--results", tmp_path)
    assert code == 2 and "missing column(s) radius, correct" in err
    tsv = write(tmp_path / "x.tsv", flags())
    code, _, err = cli("import", "--tsv", tsv, "--method", "m", "--dataset", "cifar100",
                       "--sigma", 0.25, "--results", tmp_path)
    assert code == 2 and "--dataset 'cifar100' unknown" in err
    dup = tmp_path / "dup.tsv"
    dup.write_text(HEADER + "0\t1\t1\t0.5\t1\t1.0\n0\t1\t1\t0.5\t1\t1.0\n")
    code, _, err = cli("import", "--tsv", dup, "--method", "m", "--dataset", "digits",
                       "--sigma", 0.25, "--results", tmp_path)
    assert code == 2 and "duplicate idx" in err


def test_reporting_commands_never_import_torch(tmp_path):
    """table, leaderboard and import work on a machine without torch (a web host, a laptop)."""
    import subprocess
    import sys

    tsv = write(tmp_path / "t.tsv", flags())
    code = (
        "import sys\n"
        "from bench.cli import main\n"
        f"assert main(['import', '--tsv', {str(tsv)!r}, '--method', 'm', '--dataset', 'digits',"
        f" '--sigma', '0.25', '--results', {str(tmp_path / 'r')!r}]) == 0\n"
        f"assert main(['table', '--dataset', 'digits', '--results', {str(tmp_path / 'r')!r},"
        " '--format', 'latex']) == 0\n"
        f"assert main(['leaderboard', '--results', {str(tmp_path / 'r')!r}, '--out',"
        f" {str(tmp_path / 'lb')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lb" / "digits.html").is_file()
