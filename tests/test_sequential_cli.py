"""``--certification sequential`` through the CLI: its own run identity and card, the summary line,
label-aware exits recorded as such, one-line refusals, and tables that never rank a
sequential row against fixed-N rows."""

from __future__ import annotations

import csv
import json

SMALL = ("--method", "gaussian", "--n", 2000, "--n0", 50, "--max-images", 6, "--quiet")


def card(results) -> dict:
    return json.loads(next(results.rglob("summary.json")).read_text())


def test_sequential_run_has_its_own_identity_and_card(cli, tmp_path):
    code, out, err = cli("run", *SMALL, "--certification", "sequential", "--results",
                         tmp_path / "s")
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
                       "--quiet", "--certification", "sequential", "--label-aware",
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
    cases = [(("--label-aware",), "--certification sequential only"),
             (("--certification", "sequential", "--radii", "auto"), "fixed grid"),
             (("--certification", "sequential", "--procedure", "cascade"), "replaces Cohen")]
    for extra, message in cases:
        code, _, err = cli("run", *SMALL, *extra, "--results", tmp_path)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    code, _, err = cli("run", "--method", "multiscale", "--certification", "sequential", "--n", 100,
                       "--quiet", "--results", tmp_path)
    assert code == 2 and "cascade" in err and len(err.splitlines()) == 1, err


def test_tables_keep_the_certifications_apart(cli, tmp_path):
    for extra in ((), ("--certification", "sequential")):
        code, _, err = cli("run", *SMALL, *extra, "--results", tmp_path)
        assert code == 0, err
    code, out, err = cli("table", "--dataset", "digits", "--results", tmp_path, "--no-reported")
    assert code == 0, err
    assert "sequential certification" in out
    titles = [line for line in out.splitlines() if "digits, subset" in line]
    assert len(titles) == 2, out  # one group per certification: never ranked against each other
    # Side by side: the same images under both certifications, samples per image and the saving.
    code, out, err = cli("protocols", "--dataset", "digits", "--results", tmp_path)
    assert code == 0, err
    assert "fixed N = 2,000 vs sequential (looks at 200, 800, 2,400)" in out
    assert "6 images" in out and "fewer samples per image" in out
    code, _, err = cli("protocols", "--dataset", "digits", "--results", tmp_path / "empty")
    assert code == 2 and "no results store or exported runs" in err  # and creates nothing
    assert len(err.splitlines()) == 1 and not (tmp_path / "empty").exists()


def test_label_aware_runs_are_labelled_wherever_they_show(cli, tmp_path):
    """A label-aware run's early exits use the test labels: its own table group, certification
    value and legend label, and a protocols pairing that says so (the plain one too)."""
    for extra in ((), ("--certification", "sequential"), ("--certification", "sequential",
                                                     "--label-aware")):
        code, _, err = cli("run", *SMALL, *extra, "--results", tmp_path)
        assert code == 0, err
    code, out, err = cli("table", "--dataset", "digits", "--results", tmp_path, "--no-reported")
    assert code == 0, err
    titles = [line for line in out.splitlines() if line.startswith("### digits, subset")]
    assert len(titles) == 3 and "Note: no envelope" not in out, out
    assert sum("sequential label-aware certification" in t for t in titles) == 1
    assert "early exits use the test labels" in out
    code, out, err = cli("protocols", "--dataset", "digits", "--results", tmp_path)
    assert code == 0, err
    assert "vs sequential label-aware (looks at" in out and "vs sequential (looks at" in out
    assert out.count("(label-aware: it stopped after selection") == 1
    assert "samples per image; label-aware (using the test labels): " in out.splitlines()[-1]

    from bench import load_results
    from bench.reports.leaderboard import legend_labels
    from bench.reports.table import collect_rows
    from bench.store.database import Store

    runs = load_results(tmp_path, "digits")
    assert sorted(runs["certification"]) == ["fixed", "sequential", "sequential label-aware"]
    certs = load_results(tmp_path, "digits", level="certificates")
    assert set(certs["certification"]) == {"fixed", "sequential", "sequential label-aware"}
    store = Store(tmp_path)
    try:
        rows = collect_rows(store, dataset="digits")
    finally:
        store.close()
    assert sorted(r.config.count("label_aware") for r in rows) == [0, 0, 1]
    assert any(label.endswith(" sequential label-aware") for label in legend_labels(rows))


def test_protocols_says_more_samples_when_sequential_used_more(cli, tmp_path):
    """A sequential run that went to its last look (1.2 N) costs more than fixed N: not
    "0.84x fewer"."""
    args = ("run", "--method", "dummy", "--param", "kind=linear", "--n", 500, "--n0", 20,
            "--max-images", 6, "--subset", "dev", "--quiet", "--results", tmp_path)
    for extra in ((), ("--protocol", "sequential")):  # --certification's first name
        code, _, err = cli(*args, *extra)
        assert code == 0, err
    code, out, err = cli("protocols", "--dataset", "digits", "--results", tmp_path)
    assert code == 0, err
    assert "x more samples per image" in out and "fewer" not in out


def test_fine_cp_rule_has_its_own_identity_and_gs_cp_keeps_its_own(cli, tmp_path):
    """fine-cp adds its rule to the identity (a run id of its own, last look N); gs-cp's
    identity has no rule key, so sequential runs made before fine-cp keep their ids."""
    code, out, err = cli("run", *SMALL, "--certification", "sequential", "--sequential-rule",
                         "fine-cp", "--results", tmp_path)
    assert code == 0, err
    assert "sequential (FINE-CP): looks at 100, 110, 121, 134, ..., 2,000" in out
    ident = card(tmp_path)["identity"]
    assert ident["n"] == 2000 and ident["sequential"]["rule"] == "fine-cp"
    assert ident["sequential"]["futility_power"] == 0.05
    code, _, err = cli("run", *SMALL, "--certification", "sequential", "--results",
                       tmp_path / "gs")
    assert code == 0, err
    gs = card(tmp_path / "gs")["identity"]["sequential"]
    assert "rule" not in gs and "futility_power" not in gs
    code, out, err = cli("run", *SMALL, "--results", tmp_path)
    assert code == 0, err
    code, out, err = cli("protocols", "--dataset", "digits", "--results", tmp_path)
    assert code == 0, err
    assert "vs sequential (fine-cp: looks at 100, 110, 121, 134, ..., 2,000)" in out
    code, _, err = cli("run", *SMALL, "--sequential-rule", "fine-cp", "--results", tmp_path)
    assert code == 2 and "--certification sequential only" in err
    assert len(err.splitlines()) == 1
