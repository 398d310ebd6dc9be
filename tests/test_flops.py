"""Compute in every record (issue 24): forward FLOPs measured once per run with FlopCounterMode,
recorded in the card outside the identity, carried into certificates and summaries, and a
budget in FLOPs (--budget-flops) sized at its boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.certify.budget import flops_per_sample, n_for_flops, parse_flops
from bench.certify.records import Certificate, RunCard, RunSummary, certificate_flops
from bench.errors import ConfigError
from bench.running import flops
from bench.running.plan import RunOptions, prepare
from bench.store.database import Store
from tests.conftest import ROOT

# By hand: a 3x3 convolution (padding 1) costs H * W * C_out * C_in * 9 multiply-adds, a linear
# layer in * out; FlopCounterMode counts a multiply-add as 2 FLOPs.
CONV = 8 * 8 * 4 * 1 * 9 * 2  # Conv2d(1, 4, 3, padding=1) on 1x8x8: 4,608
LINEAR = 4 * 8 * 8 * 10 * 2  # Linear(256, 10): 5,120
# digits_cnn (bench.nets.small_cnn, pools=1) on 1x8x8: conv 1->32, conv 32->32, fc 512->128,
# fc 128->10
DIGITS_CNN = 8 * 8 * 32 * 9 * 2 + 8 * 8 * 32 * 32 * 9 * 2 + 32 * 4 * 4 * 128 * 2 + 128 * 10 * 2


def conv_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 10))


def test_hand_counted_conv_and_linear_are_what_a_run_records(tmp_path):
    net = conv_linear()
    prep = prepare(RunOptions(method="gaussian", dataset="digits", n0=10, n=40, max_images=1,
                              python_models={"classifier": net}, results=tmp_path,
                              progress=False))
    compute = prep.card.extra["compute"]
    assert compute["flops_per_prediction"] == CONV + LINEAR == 9_728
    assert compute["roles"] == {"classifier": CONV + LINEAR}
    assert "FlopCounterMode, batch 1, input shape 1x8x8" in compute["method"]
    assert "compute" not in prep.card.identity  # outside the identity: run ids unchanged
    cert = Certificate(prediction=1, radius=0.1, p_lower=0.6, top_class=1, count=30, n0=10,
                       n=40)
    summary = RunSummary.from_certs(prep.card, [cert])
    assert certificate_flops(cert, compute) == 50 * 9_728
    assert summary.flops_per_image == summary.max_flops_per_image == 50 * 9_728
    cost = summary.to_json()["cost_per_image"]
    assert cost["flops_per_image"] == cost["max_flops_per_image"] == 486_400


def test_roles_split_the_count_and_work_outside_them_is_other():
    denoiser, classifier = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(256, 10)
    glue = torch.randn(10, 10)

    def base(x):  # a role inside the other is counted once (the outer one)
        return classifier(denoiser(x).flatten(1)) @ glue

    out = flops.measure_call(base, {"denoiser": denoiser, "classifier": classifier}, (1, 8, 8),
                             "cpu")
    assert out["roles"] == {"denoiser": CONV, "classifier": LINEAR, "other": 10 * 10 * 2}
    assert out["flops_per_prediction"] == CONV + LINEAR + 200
    class Wrapped(nn.Module):  # a role whose network is called directly (NDC's model.net)
        def __init__(self):
            super().__init__()
            self.net = nn.Conv2d(1, 4, 3, padding=1)

    wrapped = Wrapped()
    direct = flops.measure_call(lambda x: wrapped.net(x).flatten(1)[:, :10],
                                {"conditional": wrapped}, (1, 8, 8), "cpu")
    assert direct["roles"] == {"conditional": CONV}
    wrapper = nn.Sequential(denoiser, nn.Flatten(), classifier)
    nested = flops.measure_call(wrapper, {"pipeline": wrapper, "classifier": classifier},
                                (1, 8, 8), "cpu")
    assert nested["roles"] == {"pipeline": CONV + LINEAR, "classifier": 0}


def test_measuring_draws_no_noise_and_restarts_own_randomness_at_the_probe_phase():
    seen: list[torch.Tensor] = []
    phases: list[tuple[int, int, int]] = []

    class Own(nn.Module):
        def begin_phase(self, seed, index, phase):
            phases.append((seed, index, phase))

        def forward(self, x):
            seen.append(x.clone())
            return x.flatten(1)[:, :10]

    state = torch.random.get_rng_state()
    flops.measure_call(Own(), {}, (1, 8, 8), "cpu")
    assert phases == [(0, 0, flops.PROBE_PHASE)]
    assert len(seen) == 1 and seen[0].shape == (flops.FLOP_BATCH, 1, 8, 8)
    assert bool((seen[0] == 0.5).all())  # a constant image, never a noisy sample
    assert torch.equal(torch.random.get_rng_state(), state)


def test_committed_runs_record_the_hand_counted_classifier_and_their_roles():
    cards = [json.loads(p.read_text()) for p in (ROOT / "leaderboards" / "runs").glob(
        "*/card.json")]
    assert len(cards) == 31
    unet = None
    for card in cards:
        compute, ident = card["compute"], card["identity"]
        assert sum(compute["roles"].values()) == compute["flops_per_prediction"]
        cost = card["cost_per_image"]
        stages = card["budget"].get("stages", 1)
        assert cost["max_flops_per_image"] == stages * (ident["n0"] + ident["n"]) * \
            compute["flops_per_prediction"]
        assert cost["flops_per_image"] == pytest.approx(
            cost["samples"] * compute["flops_per_prediction"], rel=1e-12)
        if "classifier" in compute["roles"]:
            assert compute["roles"]["classifier"] == ident["m"] * DIGITS_CNN
        if ident["method"] == "dds":
            unet = compute["roles"]["denoiser"]
    for card in cards:  # NDC: classes x grid passes of a UNet the size of the DDPM's
        ident = card["identity"]
        if ident["method"] == "ndc":
            assert card["compute"]["roles"]["conditional"] == 10 * ident["params"]["grid"] * unet


def test_cascade_certificate_counts_each_visited_stage_at_its_own_figure():
    compute = {"flops_per_prediction": 300, "roles": {},
               "stages": [{"sigma": 0.5, "flops_per_prediction": 300, "roles": {}},
                          {"sigma": 0.25, "flops_per_prediction": 100, "roles": {}}]}
    stages = [{"stage": 0, "sigma": 0.5, "n0": 10, "n": 90, "decision": "skip"},
              {"stage": 1, "sigma": 0.25, "n0": 10, "n": 90, "decision": "accept"}]
    cert = Certificate(prediction=1, radius=0.1, p_lower=0.6, top_class=1, count=80, n0=10,
                       n=90, stages=stages)
    assert certificate_flops(cert, compute) == 100 * 300 + 100 * 100
    assert certificate_flops(Certificate(prediction=1, radius=0.1, p_lower=0.6, top_class=1,
                                         count=80, n0=10, n=90, stages=stages[:1]),
                             compute) == 100 * 300
    assert flops_per_sample(compute, 2) == 400
    assert flops_per_sample({"flops_per_prediction": 300}, 3) == 900
    assert certificate_flops(cert, None) is None


# ----- the budget in FLOPs -------------------------------------------------------------------
@pytest.mark.parametrize(("flops", "n"), [(110 * 1_000, 100), (110 * 1_000 - 1, 99),
                                          (111 * 1_000 - 1, 100), (11 * 1_000, 1)])
def test_flops_budget_arithmetic_at_its_boundaries(flops, n):
    assert n_for_flops(flops, 10, 1_000, "x") == n
    assert (10 + n) * 1_000 <= flops < (10 + n + 1) * 1_000


def test_flops_budget_below_one_selection_and_estimation_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"below N0 = 10 selection samples plus one estimation "
                                          r"sample for x .* use at least 11,000 FLOPs"):
        n_for_flops(11 * 1_000 - 1, 10, 1_000, "x")
    with pytest.raises(ConfigError, match="counts no FLOPs"):
        n_for_flops(10**9, 10, 0, "dummy")
    # a cascade's stages all fit: (N0 + N) x stages x FLOPs <= F
    assert n_for_flops(3 * 110 * 1_000, 10, 3 * 1_000, "x", stages=3) == 100
    assert n_for_flops(3 * 110 * 1_000 - 1, 10, 3 * 1_000, "x", stages=3) == 99


@pytest.mark.parametrize(("text", "value"), [("4.5e9", 4_500_000_000), ("1000", 1000),
                                             ("1_000.9", 1000)])
def test_flops_budget_parses_scientific_notation(text, value):
    assert parse_flops(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "inf", "nan", "0.5"])
def test_flops_budget_refuses_what_is_not_a_positive_count(text):
    with pytest.raises(ConfigError, match="positive number of FLOPs"):
        parse_flops(text)


def _card(out_dir: Path) -> dict:
    return json.loads(next(out_dir.rglob("summary.json")).read_text())


def test_budget_flops_cli_sizes_n_at_and_below_the_boundary(cli, tmp_path):
    common = ("run", "--method", "gaussian", "--dataset", "digits", "--n0", "10",
              "--max-images", "1", "--quiet")
    exact = 60 * DIGITS_CNN  # (N0 + N) = 60 noisy samples
    code, out, err = cli(*common, "--budget-flops", str(exact), "--results", tmp_path / "a")
    assert code == 0, err
    card = _card(tmp_path / "a")
    assert card["identity"]["n"] == 50
    assert card["budget"]["requested_flops"] == exact and card["budget"]["requested"] is None
    assert card["cost_per_image"]["max_flops_per_image"] == exact
    assert "N = floor(" in out and "- N0 = 50" in out
    code, _, err = cli(*common, "--budget-flops", f"{exact - 1:.17g}", "--results",
                       tmp_path / "b")
    assert code == 0, err
    assert _card(tmp_path / "b")["identity"]["n"] == 49
    assert _card(tmp_path / "b")["cost_per_image"]["max_flops_per_image"] <= exact - 1
    # the same N given directly is the same run: FLOPs never enter the identity
    code, _, err = cli(*common, "--n", "50", "--results", tmp_path / "a")
    assert code == 0, err
    assert len(list((tmp_path / "a" / "runs").iterdir())) == 1
    for bad, says in ((str(10 * DIGITS_CNN), "below N0 = 10 selection samples"),
                      ("1e12 --n 5", "drop --n")):
        code, out, err = cli(*common, "--budget-flops", *bad.split(), "--results",
                             tmp_path / "c")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "c").exists()


def test_budget_flops_counts_every_stage_of_a_cascade_and_a_sequential_last_look(
        toy_registry, tmp_path):
    common = {"dataset": "digits", "n0": 10, "extra_registries": (toy_registry,),
              "results": tmp_path, "progress": False}
    # multiscale with a zero-cost denoiser: one classifier pass per sample, three scales
    prep = prepare(RunOptions(method="multiscale", budget_flops=3 * 60 * DIGITS_CNN,
                              params={"denoiser": "toy-zero-eps"}, **common))
    assert prep.card.extra["compute"]["flops_per_prediction"] == DIGITS_CNN
    assert prep.procedure.budget.stages == 3 and prep.procedure.budget.n == 50
    summary = RunSummary.from_certs(prep.card, [])
    assert summary.max_flops_per_image == 3 * 60 * DIGITS_CNN
    prep = prepare(RunOptions(method="gaussian", certification="sequential",
                              budget_flops=1010 * DIGITS_CNN, **common))
    assert prep.procedure.card()["checkpoints"][-1] == 1000  # the worst case fits F
    assert RunSummary.from_certs(prep.card, []).max_flops_per_image == 1010 * DIGITS_CNN
    prep = prepare(RunOptions(method="diffsmooth", budget_flops=60 * 4 * DIGITS_CNN,
                              params={"denoiser": "toy-zero-eps", "m": 4}, **common))
    assert prep.card.extra["compute"]["roles"] == {"classifier": 4 * DIGITS_CNN,
                                                   "denoiser": 0}
    assert prep.card.identity["n"] == 50 and prep.card.identity["m"] == 4


def test_measured_once_per_configuration_and_cached_in_the_results_folder(tmp_path,
                                                                         monkeypatch):
    opts = RunOptions(method="gaussian", dataset="digits", n0=10, n=20, max_images=1,
                      results=tmp_path, progress=False)
    from bench.running.runner import run

    first = run(opts)
    cache = json.loads((tmp_path / flops.CACHE_NAME).read_text())
    assert [v["flops_per_prediction"] for v in cache.values()] == [DIGITS_CNN]

    def counted(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(flops, "compute_block", counted)
    again = run(opts)  # from the cache
    assert again.summary.card.extra["compute"] == first.summary.card.extra["compute"]


def test_bench_flops_backfills_a_stored_run_without_changing_its_id_or_certificates(
        cli, tmp_path):
    results = tmp_path / "res"
    code, _, err = cli("run", "--method", "dds", "--dataset", "digits", "--n0", "10", "--n",
                       "20", "--max-images", "2", "--quiet", "--results", results)
    assert code == 0, err
    folder = next((results / "runs").iterdir())
    certs = (folder / "certs.tsv").read_bytes()
    store = Store(results)
    (run,) = store.runs_of()
    measured = run.card.extra.pop("compute")
    store.update_card(run.card.run_id, run.card)  # as a run stored before FLOPs were measured
    store.export(run.card.run_id)
    store.close()
    assert "flops_per_image" in _card(results)["cost_per_image"]
    assert _card(results)["cost_per_image"]["flops_per_image"] is None
    code, out, err = cli("flops", "--results", results)
    assert code == 0, err
    assert f"{folder.name}: {measured['flops_per_prediction']:,} FLOPs per prediction" in out
    card = _card(results)
    assert card["compute"] == measured and card["run_id"] == run.card.run_id
    assert card["cost_per_image"]["flops_per_image"] == 30 * measured["flops_per_prediction"]
    assert (folder / "certs.tsv").read_bytes() == certs
    code, out, err = cli("flops", "--results", results)  # nothing left to do
    assert code == 0 and "0 run(s) gained" in out
    code, _, err = cli("flops", "--results", tmp_path / "none")
    assert code == 2 and "holds no results store" in err


def test_a_resumed_run_stored_without_compute_gains_it(tmp_path):
    from bench.running.runner import run

    opts = RunOptions(method="gaussian", dataset="digits", n0=10, n=20, max_images=1,
                      results=tmp_path, progress=False)
    first = run(opts)
    store = Store(tmp_path)
    card = store.run_card(first.run_id)
    compute = card.extra.pop("compute")
    store.update_card(first.run_id, RunCard(identity=card.identity, extra=card.extra))
    store.close()
    again = run(RunOptions(**{**opts.__dict__, "max_images": 2}))
    assert again.run_id == first.run_id
    assert again.summary.card.extra["compute"] == compute


def test_bench_flops_never_records_a_figure_measured_on_other_models(cli, tmp_path):
    results = tmp_path / "res"
    code, _, err = cli("run", "--method", "gaussian", "--dataset", "digits", "--n0", "10",
                       "--n", "20", "--max-images", "1", "--quiet", "--results", results)
    assert code == 0, err
    store = Store(results)
    (run,) = store.runs_of()
    extra = {k: v for k, v in run.card.extra.items() if k != "compute"}
    # the card names another model for the role than the one the identity hashes
    extra["model_roles"] = {"classifier": {"name": "digits-cnn-gaussian-0.5", "sha256": "x"}}
    store.update_card(run.card.run_id, RunCard(identity=run.card.identity, extra=extra))
    store.close()
    code, out, err = cli("flops", "--results", results)
    assert code == 1 and "its models differs from the stored run's: nothing recorded" in out
    store = Store(results, readonly=True)
    assert "compute" not in store.run_card(run.card.run_id).extra
    store.close()


def test_compare_at_equal_flops_gives_each_method_its_own_n(cli, toy_registry, tmp_path):
    code, out, err = cli("compare", "--dataset", "digits", "--budget-flops",
                         str(60 * DIGITS_CNN), "--methods", "dds,diffsmooth", "--m", "2,4",
                         "--n0", "10", "--max-images", "1", "--quiet", "--results", tmp_path,
                         "--extra-registry", toy_registry, "--param", "denoiser=toy-zero-eps")
    assert code == 0, err
    # a zero-cost denoiser: one classifier pass per DDS sample, m per DiffSmooth sample
    for setting in ("N = 50, m = 1", "N = 20, m = 2", "N = 5, m = 4"):
        assert setting in out, out
    assert "budget=8.101e+07 FLOPs/image" in out
    for path in tmp_path.rglob("summary.json"):
        card = json.loads(path.read_text())
        assert card["cost_per_image"]["max_flops_per_image"] <= 60 * DIGITS_CNN
        assert card["budget"]["requested_flops"] == 60 * DIGITS_CNN
    code, _, err = cli("compare", "--budget", "100", "--budget-flops", "1e9")
    assert code == 2 and "not allowed with argument" in err
