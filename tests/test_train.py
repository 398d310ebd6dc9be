"""`python -m bench train`: seeded training writing weights, a model card and a registry entry."""

from __future__ import annotations

import json

import pytest
import torch

from bench.nets import sha256_file
from bench.registry.entries import load_registry
from tests.conftest import ROOT


def test_train_writes_weights_card_and_entry(cli, tmp_path):
    code, out, err = cli("train", "--method", "gaussian", "--dataset", "digits", "--sigma", 0.5,
                         "--epochs", 2, "--out", tmp_path, "--name", "my-digits-0.5", "--quiet")
    assert code == 0, err
    weights = tmp_path / "my-digits-0.5.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_file(weights)
    assert card["epochs"] == 2 and card["seed"] == 0 and card["method"] == "gaussian"
    assert 0 < card["noisy_accuracy"] <= card["clean_accuracy"] <= 1
    assert card["sha256"] in out and "registry entry" in out
    # The printed entry certifies as-is from an extra registry file.
    entry = out.split("registry entry:\n", 1)[1]
    extra = tmp_path / "mine.yaml"
    extra.write_text(entry + "methods:\n  mine:\n    adapter: methods.gaussian:Gaussian\n"
                     "    datasets:\n      digits:\n        classifier: "
                     "{0.5: my-digits-0.5}\n")
    code, out, err = cli("run", "--method", "mine", "--sigma", 0.5, "--n", 200,
                         "--max-images", 2, "--extra-registry", extra,
                         "--results", tmp_path / "res", "--quiet")
    assert code == 0, err


def test_train_rejects_untrainable_methods_and_bad_values(cli, tmp_path):
    code, _, err = cli("train", "--method", "dummy", "--out", tmp_path)
    assert code == 2 and "has nothing to train" in err and "gaussian" in err
    code, _, err = cli("train", "--epochs", 0, "--out", tmp_path)
    assert code == 2 and "--epochs must be at least 1" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(
    name for name, entry in load_registry(ROOT / "registry.yaml").models.items()
    if entry.get("source") == "zoo"
    and entry.get("trained_by") in ("gaussian", "smoothadv", "macer", "consistency", "clean")))
def test_zoo_model_is_reproduced_bit_for_bit_by_its_command(cli, tmp_path, name):
    """Re-run the recorded training command; on a CPU like the one that trained the zoo
    (x86_64, torch 2.14.1) the weights are identical (other CPUs may differ in the last bits)."""
    entry = load_registry(ROOT / "registry.yaml").model(name)
    card = json.loads((ROOT / "bench" / "zoo" / entry["path"]).with_suffix(".json").read_text())
    args = entry["trained_with"].split()[3:]  # drop "python -m bench"
    threads = torch.get_num_threads()
    torch.set_num_threads(card.get("cpu_threads", threads))  # CPU sums depend on the split
    try:
        code, _, err = cli(*args, "--out", tmp_path, "--quiet")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert sha256_file(tmp_path / entry["path"]) == entry["sha256"]


def test_train_init_fine_tunes_from_a_registered_classifier(cli, tmp_path):
    """--init starts from the registered weights (hash-checked) and says so in the card."""
    from safetensors.torch import load_file

    start = load_file(ROOT / "bench" / "zoo" / "digits-cnn-gaussian-0.25.safetensors")
    common = ("train", "--method", "gaussian", "--dataset", "digits", "--sigma", 0.25,
              "--epochs", 1, "--lr", 1e-12, "--out", tmp_path, "--quiet")
    code, _, err = cli(*common, "--init", "digits-cnn-gaussian-0.25", "--name", "tuned")
    assert code == 0, err
    tuned = load_file(tmp_path / "tuned.safetensors")
    # A step of 1e-12 leaves the starting weights in place; a fresh initialisation does not.
    assert max((tuned[k] - start[k]).abs().max().item() for k in start) < 1e-6
    card = json.loads((tmp_path / "tuned.json").read_text())
    assert card["init"] == {"name": "digits-cnn-gaussian-0.25", "arch": "digits_cnn",
                            "sha256": sha256_file(ROOT / "bench" / "zoo"
                                                  / "digits-cnn-gaussian-0.25.safetensors")}
    code, _, err = cli(*common, "--name", "fresh")
    assert code == 0, err
    fresh = load_file(tmp_path / "fresh.safetensors")
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 0.01
    # A denoiser or another architecture is refused in one line.
    code, _, err = cli(*common, "--init", "digits-ddpm")
    assert code == 2 and "not a classifier" in err
    code, _, err = cli(*common, "--arch", "mnist_cnn", "--init", "digits-cnn-gaussian-0.25")
    assert code == 2 and "digits_cnn network but this run trains mnist_cnn" in err
