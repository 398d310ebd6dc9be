"""Multi-scale smoothing through the CLI: ``python -m bench run --method multiscale``."""

from __future__ import annotations

import csv
import json

import pytest

from bench.store.database import TSV_COLUMNS

COHEN = ["idx", "label", "predict", "radius", "correct", "time"]
SMALL = ("--dataset", "digits", "--subset", "dev", "--n", "60", "--n0", "10", "--quiet")


def rows(folder):
    with open(folder / "certs.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def run_folder(tmp):
    (folder,) = (tmp / "runs").iterdir()
    return folder


def test_run_records_each_stage(cli, tmp_path):
    code, out, err = cli("run", "--method", "multiscale", *SMALL, "--max-images", "3",
                         "--results", tmp_path)
    assert code == 0, err
    assert "cascade over sigma 1, 0.5, 0.25 (largest first), p0 = 0.5" in out
    folder = run_folder(tmp_path)
    header = (folder / "certs.tsv").read_text().splitlines()[0].split("\t")
    assert header[:6] == COHEN and header == [*TSV_COLUMNS, "stage", "outcome", "stages"]
    for row in rows(folder):
        stages = json.loads(row["stages"])
        assert [s["sigma"] for s in stages] == [1.0, 0.5, 0.25][: len(stages)]
        assert all(set(s) >= {"counts_select", "counts_estimate", "p_lower", "decision"}
                   for s in stages)
        accepted = int(row["stage"])
        assert (accepted >= 0) == (int(row["predict"]) >= 0)
        assert row["outcome"].startswith("accept at" if accepted >= 0 else "abstain")
        assert int(row["diffusion_passes"]) == 70 * len(stages)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["identity"]["procedure"] == "cascade"
    assert summary["identity"]["sigma"] == 1.0
    assert summary["identity"]["params"]["scales"] == [0.25, 0.5, 1.0]
    card = summary["procedure"]
    assert card["alpha_spent"] == pytest.approx(0.001)
    assert len(card["alpha_split"]) == 3
    tally = summary["stages"]
    assert sum(tally["accepted_at_sigma"].values()) + sum(tally["abstained"].values()) == 3
    # Tables name the scales (a cascade has no single sigma, and no best-over-sigma envelope).
    code, out, err = cli("table", "--dataset", "digits", "--results", tmp_path, "--no-reported")
    assert code == 0 and "| 1/0.5/0.25 cascade |" in out, err


def test_resume_gives_the_same_certificates(cli, tmp_path):
    args = ("run", "--method", "multiscale", *SMALL, "--param", "scales=0.5,1.0")
    assert cli(*args, "--max-images", "1", "--results", tmp_path / "a")[0] == 0
    assert cli(*args, "--max-images", "3", "--results", tmp_path / "a")[0] == 0
    assert cli(*args, "--max-images", "3", "--batch", "7", "--results", tmp_path / "b")[0] == 0
    a, b = rows(run_folder(tmp_path / "a")), rows(run_folder(tmp_path / "b"))
    drop = ("time",)
    strip = [[{k: v for k, v in r.items() if k not in drop} for r in x] for x in (a, b)]
    assert len(a) == 3 and strip[0] == strip[1]
    # A table labels the run with the params that differ from the registry entry's.
    code, out, err = cli("table", "--dataset", "digits", "--results", tmp_path / "a",
                         "--no-reported")
    assert code == 0 and "| multiscale (scales=0.5,1) |" in out, err


def test_a_single_scale_needs_no_trailing_comma(cli, tmp_path):
    """--param scales=0.5 is the one-level cascade that scales=0.5, writes: the same run."""
    args = ("run", "--method", "multiscale", *SMALL, "--max-images", "1", "--results", tmp_path)
    code, _, err = cli(*args, "--param", "scales=0.5")
    assert code == 0, err
    code, out, err = cli(*args, "--param", "scales=0.5,")
    assert code == 0 and "1 new" not in out and "0 new" in out, err
    summary = json.loads((run_folder(tmp_path) / "summary.json").read_text())
    assert summary["identity"]["params"]["scales"] == [0.5]


def test_budget_gives_each_stage_its_share(cli, tmp_path):
    code, out, err = cli("run", "--method", "multiscale", "--dataset", "digits", "--subset",
                         "dev", "--budget", "150", "--n0", "10", "--max-images", "1", "--quiet",
                         "--results", tmp_path)
    assert code == 0, err
    assert "N = 150 // (3 stages x m) = 50" in out
    summary = json.loads((run_folder(tmp_path) / "summary.json").read_text())
    assert summary["budget"]["stages"] == 3 and summary["budget"]["requested"] == 150
    assert summary["identity"]["n"] == 50


@pytest.mark.parametrize(("args", "message"), [
    (("--method", "multiscale", "--sigma", "0.5"), "--sigma 0.5 does not apply to the cascade"),
    (("--method", "multiscale", "--procedure", "cohen"), "certified with the cascade procedure"),
    (("--method", "dds", "--procedure", "cascade"), "cannot run under the cascade procedure"),
    (("--method", "multiscale", "--param", "scales=0.5,0.5"), "must be distinct"),
    (("--method", "multiscale", "--param", "scales=0.5,-1"), "must be in (0, 10]"),
    (("--method", "multiscale", "--param", "p0=0.4"), "p0: expected float in [0.5, 0.999]"),
])
def test_bad_cascade_requests_are_one_line(cli, tmp_path, args, message):
    code, out, err = cli("run", *args, "--dataset", "digits", "--subset", "dev", "--n", "10",
                         "--max-images", "1", "--quiet", "--results", tmp_path)
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_compare_takes_multiscale_beside_dds(cli, tmp_path):
    code, out, err = cli("compare", "--dataset", "digits", "--subset", "dev", "--budget", "90",
                         "--methods", "dds,multiscale", "--max-images", "1", "--quiet",
                         "--results", tmp_path)
    assert code == 0, err
    assert "N = 90, m = 1" in out and "N = 30 per stage x 3, m = 1" in out


@pytest.mark.slow
def test_train_cli_finetunes_the_zoo_ddpm(cli, tmp_path):
    """``bench train --method multiscale`` fine-tunes digits-ddpm with the classifier frozen
    and prints the registry entry of a diffusers folder (one epoch here, about a minute)."""
    code, out, err = cli("train", "--method", "multiscale", "--dataset", "digits", "--epochs",
                         "1", "--out", tmp_path, "--name", "ft", "--quiet")
    assert code == 0, err
    card = json.loads((tmp_path / "ft" / "card.json").read_text())
    assert card["base"] == "digits-ddpm" and card["classifier"] == "digits-cnn-clean"
    assert card["scales"] == [0.25, 0.5, 1.0] and card["epochs"] == 1
    assert "trained_by: multiscale" in out and "source: diffusers" in out
