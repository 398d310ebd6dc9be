"""``--protocol sequential`` through the CLI: its own run identity and card, the summary line,
label-aware exits recorded as such, one-line refusals, and tables that never rank a
sequential row against fixed-N rows."""

from __future__ import annotations

import csv
import json

SMALL = ("--method", "gaussian", "--n", 2000, "--n0", 50, "--max-images", 6, "--quiet")


def card(results) -> dict:
    return json.loads(next(results.rglob("summary.json")).read_text())


def test_sequential_run_has_its_own_identity_and_card(cli, tmp_path):
    code, out, err = cli("run", *SMALL, "--protocol", "sequential", "--results", tmp_path / "s")
    assert code == 0, err
    assert "sequential (GS-CP): looks at 200, 800, 2,400" in out and "mean samples" in out
    c = card(tmp_path / "s")
    ident = c["identity"]
    assert ident["procedure"] == "sequential" and ident["n"] == 2400  # ceil(1.2 N): worst case
    assert ident["sequential"]["checkpoints"] == [200, 800, 2400]
    assert sum(ident["sequential"]["checkpoint_alphas"]) <= ident["alpha"]
    assert ident["sequential"]["grid"] == c["radius_grid"]
    assert set(c["stages"]["certified_at_level"]) <= {"none", *map(str, range(9))}
    code, _, err = cli("run", *SMALL, "--results", tmp_path / "f")
    assert code == 0, err
    assert card(tmp_path / "f")["run_id"] != c["run_id"]


def test_label_aware_exit_is_recorded(cli, tmp_path):
    code, _, err = cli("run", "--method", "gaussian", "--sigma", 1, "--n", 500, "--n0", 20,
                       "--max-images", 40,
                       "--quiet", "--protocol", "sequential", "--label-aware",
                       "--results", tmp_path)
    assert code == 0, err
    assert card(tmp_path)["identity"]["sequential"]["label_aware"] is True
    with open(next(tmp_path.rglob("certs.tsv")), newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    wrong = [r for r in rows if int(r["top_class"]) != int(r["label"])]
    assert wrong, "sigma 1 on digits selects a wrong class for some images"
    for r in wrong:
        assert r["outcome"] == "wrong class: stopped after selection (label-aware)"
        assert int(r["predict"]) == -1 and int(r["n"]) == 0
    assert all(r["outcome"] != "wrong class: stopped after selection (label-aware)"
               for r in rows if int(r["top_class"]) == int(r["label"]))


def test_sequential_refusals_are_one_line(cli, tmp_path):
    cases = [(("--label-aware",), "--protocol sequential only"),
             (("--protocol", "sequential", "--radii", "auto"), "fixed grid"),
             (("--protocol", "sequential", "--procedure", "cascade"), "replaces Cohen")]
    for extra, message in cases:
        code, _, err = cli("run", *SMALL, *extra, "--results", tmp_path)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    code, _, err = cli("run", "--method", "multiscale", "--protocol", "sequential", "--n", 100,
                       "--quiet", "--results", tmp_path)
    assert code == 2 and "cascade" in err and len(err.splitlines()) == 1, err


def test_tables_keep_the_protocols_apart(cli, tmp_path):
    for extra in ((), ("--protocol", "sequential")):
        code, _, err = cli("run", *SMALL, *extra, "--results", tmp_path)
        assert code == 0, err
    code, out, err = cli("table", "--dataset", "digits", "--results", tmp_path, "--no-reported")
    assert code == 0, err
    assert "sequential certification" in out
    titles = [line for line in out.splitlines() if "digits, subset" in line]
    assert len(titles) == 2, out  # one group per protocol: never ranked against each other
    # Side by side: the same images under both protocols, samples per image and the saving.
    code, out, err = cli("protocols", "--dataset", "digits", "--results", tmp_path)
    assert code == 0, err
    assert "fixed N = 2,000 vs sequential (looks at 200, 800, 2,400)" in out
    assert "6 images" in out and "fewer samples per image" in out
    code, _, err = cli("protocols", "--dataset", "digits", "--results", tmp_path / "empty")
    assert code == 2 and "no pair" in err and len(err.splitlines()) == 1
