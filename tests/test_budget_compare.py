"""Fixed budgets (N = B // m) and the same-compute comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.certify.budget import n_for_budget
from bench.errors import ConfigError
from bench.running.plan import RunOptions, prepare


@pytest.mark.parametrize(("budget", "m", "n"), [(100_000, 1, 100_000), (100_000, 5, 20_000),
                                                (100_000, 10, 10_000), (100_000, 20, 5_000),
                                                (10_000, 3, 3_333), (7, 7, 1)])
def test_budget_arithmetic(budget, m, n):
    assert n_for_budget(budget, m, "x") == n
    assert n * m <= budget < (n + 1) * m


def test_budget_below_m_is_an_error():
    with pytest.raises(ConfigError, match="smaller than diffsmooth's m = 5"):
        n_for_budget(4, 5, "diffsmooth")


def test_runner_budget_sets_n_from_the_methods_m(toy_registry, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    opts = RunOptions(method="diffsmooth", dataset="digits", budget=1000, n0=30,
                      extra_registries=(toy_registry,), results=tmp_path,
                      params={"denoiser": "toy-zero-eps", "m": 7}, progress=False)
    prep = prepare(opts)
    assert prep.procedure.budget.n == 142  # 1000 // 7; N0 is on top, not part of the budget
    assert prep.card.extra["budget"] == {"predictions_per_image": 994, "n0": 30, "n": 142, "m": 7,
                                   "requested": 1000}
    with pytest.raises(ConfigError, match="drop --n or --budget"):
        prepare(RunOptions(method="gaussian", budget=100, n=100, results=tmp_path))
    with pytest.raises(ConfigError, match="smaller than diffsmooth's m = 7"):
        prepare(RunOptions(method="diffsmooth", budget=6, extra_registries=(toy_registry,),
                           params={"denoiser": "toy-zero-eps", "m": 7}, results=tmp_path))


def test_budget_run_is_the_same_run_as_explicit_n(cli, toy_registry, tmp_path):
    common = ("--dataset", "digits", "--n0", "20", "--max-images", "1", "--quiet", "--results",
              tmp_path, "--extra-registry", toy_registry, "--param", "denoiser=toy-zero-eps")
    code, out_n, err = cli("run", "--method", "diffsmooth", "--n", "50", "--param", "m=4",
                           *common)
    assert code == 0, err
    code, out_b, err = cli("run", "--method", "diffsmooth", "--budget", "203", "--param", "m=4",
                           *common)
    assert code == 0, err
    run_id = out_n.split(" run ")[1].split()[0]
    assert f"run {run_id}" in out_b and "0 new" in out_b  # reused from the store
    assert "N = 203 // m = 50 (+ N0 = 20" in out_b


def test_compare_cli_table(cli, toy_registry, tmp_path):
    md = tmp_path / "table.md"
    args = ("compare", "--dataset", "digits", "--budget", "200", "--methods", "dds,diffsmooth",
            "--m", "2,4", "--baseline", "gaussian", "--n0", "10", "--max-images", "2",
            "--quiet", "--results", tmp_path / "res", "--extra-registry", toy_registry,
            "--param", "denoiser=toy-zero-eps", "--markdown", md)
    code, out, err = cli(*args[:-2], *args[-2:])
    # gaussian has no denoiser param: a shared --param must fit every method
    assert code != 0 and "unknown param" in err
    code, out, err = cli(*[a for a in args if a not in ("--baseline", "gaussian")])
    assert code == 0, err
    lines = out.splitlines()
    for setting in ("N = 200, m = 1", "N = 100, m = 2", "N = 50, m = 4"):
        assert any(setting in line for line in lines), out
    rows = {line.split()[0] + line.split("m = ")[1].split()[0]: line.split()
            for line in lines if "m = " in line}
    # diffusion passes = N0 + N per image; classifier passes = (N0 + N) x m
    assert rows["dds1"][-5:-3] == ["210", "210"]
    assert rows["diffsmooth2"][-5:-3] == ["110", "220"]
    assert rows["diffsmooth4"][-5:-3] == ["60", "240"]
    assert md.read_text().count("| diffsmooth") == 2
    summaries = list(Path(tmp_path / "res").rglob("summary.json"))
    assert len(summaries) == 3
    assert {json.loads(p.read_text())["budget"]["requested"] for p in summaries} == {200}
    # Rerunning reuses every run from the store: the same table, seconds included.
    code, again, err = cli(*[a for a in args if a not in ("--baseline", "gaussian")])
    assert code == 0 and again == out


def test_compare_baseline_row(cli, tmp_path):
    code, out, err = cli("compare", "--dataset", "digits", "--budget", "100", "--methods",
                         "dummy", "--baseline", "gaussian", "--n0", "10", "--max-images", "1",
                         "--quiet", "--results", tmp_path)
    assert code == 0, err
    assert out.count("N = 100, m = 1") == 2
    assert out.index("gaussian") < out.index("dummy")


@pytest.mark.parametrize(("extra", "message"), [
    (("--budget", "3", "--methods", "diffsmooth", "--m", "5"), "smaller than diffsmooth's m = 5"),
    (("--budget", "100", "--m", "0"), "--m must list positive integers"),
    (("--budget", "100", "--methods", "nosuch"), "unknown method 'nosuch'"),
    (("--budget", "0",), "--budget must be a positive number"),
    (("--budget", "100", "--m", "a,b"), "expected integers"),
])
def test_compare_bad_inputs_are_one_line(cli, tmp_path, extra, message):
    code, out, err = cli("compare", "--dataset", "digits", "--max-images", "1", "--quiet",
                         "--results", tmp_path, *extra)
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_compare_expands_m_only_where_it_sets_the_certification_cost(toy_registry):
    from bench.running.compare import CompareOptions, configurations

    base = RunOptions(extra_registries=(toy_registry,))
    configs = configurations(CompareOptions(budget=100, ms=(2, 4), base=base,
                                            methods=("smoothadv", "consistency", "diffsmooth")))
    # SmoothAdv's and consistency's m are training params: one run each, not one per --m.
    assert configs == [("smoothadv", {}), ("consistency", {}), ("diffsmooth", {"m": 2}),
                       ("diffsmooth", {"m": 4})]


def test_compare_training_m_is_one_row_at_m_1(cli, tmp_path):
    code, out, err = cli("compare", "--dataset", "digits", "--budget", "60", "--methods",
                         "smoothadv,consistency", "--m", "2,4", "--n0", "10", "--max-images",
                         "1", "--quiet", "--results", tmp_path)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "m = " in line]
    assert len(rows) == 2 and all("N = 60, m = 1" in line for line in rows), out
    assert [line.split()[0] for line in rows] == ["smoothadv", "consistency"]
