"""The core's seams: one record per run, procedures and executors that plug in without editing
the runner, models by role, params typed once, and run ids that stores written before keep."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from bench.certify import procedures
from bench.certify.procedures.cohen import CohenFixedN
from bench.certify.records import Certificate, RunCard, RunSummary, run_id_of
from bench.errors import ConfigError
from bench.registry.entries import load_registry
from bench.reports.leaderboard import build
from bench.reports.table import rows_from_store
from bench.running.executors import SerialExecutor
from bench.running.plan import RunOptions, prepare
from bench.running.runner import run
from bench.store.database import Store
from tests.conftest import ROOT

README_RUN_ID = "5047f68b620f"  # the default run's id, printed in README's quick start


def test_default_run_keeps_the_run_id_readme_prints(tmp_path):
    prep = prepare(RunOptions(results=tmp_path, progress=False))
    assert prep.card.run_id == README_RUN_ID
    assert f"run {README_RUN_ID}" in (ROOT / "README.md").read_text()
    # The default procedure is recorded in the card but not in the identity.
    assert "procedure" not in prep.card.identity
    assert prep.card.extra["procedure"]["name"] == "cohen"


def test_run_id_is_the_hash_of_the_canonical_identity():
    identity = {"b": 1, "a": [1, 2], "method": "x"}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    assert run_id_of(identity) == expected == RunCard(identity=dict(reversed(
        identity.items()))).run_id


def _cert(idx, prediction=1, label=1, radius=0.5):
    return Certificate(prediction=prediction, radius=radius, p_lower=0.9, top_class=1,
                       count=90, n0=10, n=100, idx=idx, label=label, device="cpu")


def test_a_run_stored_under_an_older_id_is_found_by_its_identity(tmp_path):
    identity = {"method": "gaussian", "dataset": "digits", "sigma": 0.25, "n0": 10, "n": 100,
                "m": 1, "alpha": 0.001, "subset": "dev", "subset_size": 3}
    store = Store(tmp_path)
    old = RunCard.from_json({"run_id": "legacy000001", "identity": identity})
    assert store.open_run(old) == "legacy000001"
    store.add_cert("legacy000001", _cert(0))
    again = RunCard(identity=dict(identity))
    assert again.run_id != "legacy000001"
    assert store.open_run(again) == "legacy000001"  # resumed, not duplicated
    assert store.done_indices("legacy000001") == {0}
    assert len(store.runs_of()) == 1
    store.close()


def test_certificate_correct_is_derived_and_never_true_for_an_abstention():
    assert _cert(0).correct == 1
    assert _cert(0, prediction=2).correct == 0
    assert _cert(0, prediction=-1, label=-1, radius=0.0).correct == 0
    assert dataclasses.replace(_cert(0), label=None).correct == 0


def test_certificates_do_not_depend_on_the_executor_order(tmp_path):
    prep = prepare(RunOptions(n=300, n0=20, results=tmp_path, progress=False))
    forward = list(SerialExecutor(prep.procedure, prep.dataset, prep.device).certify([3, 1, 2]))
    backward = list(SerialExecutor(prep.procedure, prep.dataset, prep.device).certify([2, 1, 3]))

    def key(certs):
        return {c.idx: dataclasses.replace(c, seconds=0.0) for c in certs}

    assert key(forward) == key(backward)
    assert {c.idx for c in forward} == {1, 2, 3} and all(c.device for c in forward)


class _HalfBatchCohen(CohenFixedN):
    """A new procedure: Cohen's statistics, recorded under another name."""

    name = "probe"


def test_a_new_procedure_plugs_in_without_editing_the_runner(tmp_path, monkeypatch):
    monkeypatch.setitem(procedures.PROCEDURES, "probe", _HalfBatchCohen)
    opts = RunOptions(n=200, n0=20, max_images=2, results=tmp_path, progress=False)
    base = run(opts)
    probed = run(dataclasses.replace(opts, procedure="probe"))
    assert probed.summary.card.identity["procedure"] == "probe"
    assert probed.summary.card.extra["procedure"]["name"] == "probe"
    assert probed.run_id != base.run_id  # another procedure is another protocol
    # Same statistics, same seeds: the same certificates.
    store = Store(tmp_path)
    a, b = store.certs(base.run_id), store.certs(probed.run_id)
    store.close()
    assert [(c.prediction, c.radius) for c in a] == [(c.prediction, c.radius) for c in b]
    with pytest.raises(ConfigError,
                       match="unknown procedure .nope.; valid: cohen, cascade, sequential, probe"):
        prepare(dataclasses.replace(opts, procedure="nope"))


def test_one_summary_feeds_run_table_and_leaderboard(tmp_path):
    result = run(RunOptions(n=200, n0=20, max_images=5, results=tmp_path, progress=False))
    written = json.loads((result.folder / "summary.json").read_text())
    store = Store(tmp_path)
    (row,) = rows_from_store(store)
    build(store, load_registry(ROOT / "registry.yaml"), tmp_path / "board")
    stored = RunSummary.from_certs(store.run_card(result.run_id), store.certs(result.run_id))
    store.close()
    card = json.loads(next((tmp_path / "board" / "runs").glob("*/card.json")).read_text())
    assert written["metrics"] == card["metrics"] == stored.to_json()["metrics"]
    assert {f"{r:g}": v for r, v in row.accuracy.items()} == written["metrics"][
        "certified_accuracy"]
    assert row.acr == written["metrics"]["acr"] and row.seconds == written[
        "cost_per_image"]["seconds"]


def test_models_are_recorded_by_role_with_their_hashes(tmp_path, toy_registry):
    result = run(RunOptions(method="dds", n=20, n0=5, max_images=1, results=tmp_path,
                            progress=False, extra_registries=(toy_registry,),
                            model=["denoiser=toy-zero-eps"]))
    card = result.summary.card
    roles = card.extra["model_roles"]
    assert roles["classifier"]["name"] == "digits-cnn-clean"
    assert roles["denoiser"]["name"] == "toy-zero-eps"
    # A code-defined denoiser is identified by its source file's sha256.
    source = toy_registry.parent / "toy_zero_eps_denoiser.py"
    assert roles["denoiser"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert card.identity["models"] == {r["name"]: r["sha256"] for r in roles.values()}


def test_param_errors_name_where_the_value_came_from(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("methods:\n  ds2:\n    adapter: methods.diffsmooth:DiffSmooth\n"
                     "    params: {m: many}\n")
    with pytest.raises(ConfigError, match=rf"{extra}: methods\.ds2\.params\.m: expected int"):
        prepare(RunOptions(method="ds2", extra_registries=(extra,), results=tmp_path))
    with pytest.raises(ConfigError, match=r"--param local_sigma must be in \(0, 10\]"):
        prepare(RunOptions(method="diffsmooth", params={"local_sigma": 11},
                           results=tmp_path))
    with pytest.raises(ConfigError, match="--param m_: unknown param .*did you mean 'm'"):
        prepare(RunOptions(method="diffsmooth", params={"m_": 3}, results=tmp_path))


def test_noise_generator_device_type_is_in_the_identity_except_for_the_cpu(tmp_path,
                                                                           monkeypatch):
    """torch's CPU and CUDA generators draw different streams from one seed: a run resumed on
    another device type is another run. The CPU is protocol 1's implicit generator, left out
    so every CPU run id stays what it was."""
    import torch

    from bench.certify.noise import noise_identity
    from bench.running import plan

    cpu = noise_identity((1, 8, 8), "cpu")
    assert "generator" not in cpu
    assert noise_identity((1, 8, 8), torch.device("cuda", 1)) == {**cpu, "generator": "cuda"}
    calls = []
    real = plan.run_card
    monkeypatch.setattr(plan, "run_card",
                        lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    prep = prepare(RunOptions(results=tmp_path, progress=False, device="cpu"))
    assert prep.card.run_id == README_RUN_ID and "generator" not in prep.card.identity["noise"]
    # The same run card built for a CUDA device (no GPU here: only the card is built).
    monkeypatch.setattr(plan, "environment", lambda device: {"device": str(device)})
    ((args, kwargs),) = calls
    card = real(*args[:-1], torch.device("cuda"), **kwargs)
    assert card.identity["noise"]["generator"] == "cuda"
    assert {k: v for k, v in card.identity.items() if k != "noise"} == {
        k: v for k, v in prep.card.identity.items() if k != "noise"}
    assert card.run_id != README_RUN_ID
