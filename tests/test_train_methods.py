"""Training-based methods through ``python -m bench train``: each writes a loadable model and a
card; --param reaches the adapter (typed and checked by its PARAMS); a crashed run resumes bit
for bit. The recipes and the crop-flip augmentation of :mod:`bench.training`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bench.contract import TrainContext
from bench.data.loaders import load_split
from bench.data.specs import spec
from bench.errors import ConfigError
from bench.nets import load_network, sha256_file
from bench.training.loop import crop_flip
from bench.training.recipes import (
    MACER_RECIPE,
    REFERENCE_RECIPE,
    recipe_name,
    smoothadv_recipe,
    train_settings,
)
from methods.consistency import Consistency
from methods.macer import Macer
from methods.smoothadv import SmoothAdv

# Small, fast settings: one epoch of digits in large batches.
FAST = {
    "smoothadv": ["--param", "steps=1", "--param", "m=1", "--param", "epsilon=0.5"],
    "macer": ["--param", "k=2", "--param", "lbd=4", "--lr", "0.01"],
    "consistency": ["--param", "m=2", "--param", "lbd=5"],
}


@pytest.mark.parametrize("method", sorted(FAST))
def test_method_trains_through_the_cli_and_writes_a_loadable_model_and_card(cli, tmp_path,
                                                                           method):
    code, out, err = cli("train", "--method", method, "--dataset", "digits", "--sigma", 0.5,
                         "--epochs", 1, "--batch", 512, "--seed", 3, *FAST[method],
                         "--out", tmp_path, "--quiet")
    assert code == 0, err
    name = f"digits-cnn-{method}-0.5"
    weights = tmp_path / f"{name}.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["method"] == method and card["epochs"] == 1 and card["seed"] == 3
    assert card["sha256"] == sha256_file(weights) and card["sha256"] in out
    assert 0 <= card["noisy_accuracy"] <= 1 and 0 <= card["clean_accuracy"] <= 1
    assert card["train_seconds"] > 0 and card["recipe"] == "project"
    for flag, item in zip(FAST[method][::2], FAST[method][1::2], strict=True):
        if flag == "--param":
            key, value = item.split("=")
            assert card["params"][key] == yaml.safe_load(value)  # typed: lbd=4 is 4.0
    assert not weights.with_suffix(".ckpt").exists()  # removed once the run completed
    info = load_split("digits", "test").info
    net = load_network(name, {"arch": "digits_cnn", "source": "state_dict", "path": str(weights),
                              "sha256": card["sha256"]}, dataset=info, base_dir=tmp_path)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_train_param_errors_name_the_param(cli, tmp_path):
    code, _, err = cli("train", "--method", "smoothadv", "--param", "epsilonn=0.5",
                       "--out", tmp_path)
    assert code == 2 and "epsilonn" in err and "epsilon" in err
    code, _, err = cli("train", "--method", "macer", "--param", "k=many", "--out", tmp_path)
    assert code == 2 and "k:" in err and "expected int" in err and "'many'" in err
    code, _, err = cli("train", "--method", "smoothadv", "--param", "epsilon", "--out", tmp_path)
    assert code == 2 and "KEY=VALUE" in err


def _resume_args(tmp_path, *extra):
    return ("train", "--method", "smoothadv", "--dataset", "digits", "--sigma", 0.25,
            "--epochs", 3, "--batch", 256, "--param", "steps=1", "--param", "warmup=3",
            "--param", "epsilon=0.5", "--out", tmp_path, "--quiet", *extra)


@pytest.mark.slow
def test_crashed_training_resumes_to_the_same_weights_bit_for_bit(cli, tmp_path, monkeypatch):
    """Crash mid-epoch 2 (an exception inside an optimizer step), rerun the same command:
    the final weights equal an uninterrupted run's, epsilon warm-up and all RNG streams
    included. A changed command refuses the stale checkpoint instead of mixing runs."""
    straight = tmp_path / "straight"
    code, _, err = cli(*_resume_args(straight))
    assert code == 0, err
    expected = sha256_file(straight / "digits-cnn-smoothadv-0.25.safetensors")

    crashed = tmp_path / "crashed"
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # 6 steps per epoch at batch 256: the 3rd step of epoch 2
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", failing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli(*_resume_args(crashed))
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    ckpt = crashed / "digits-cnn-smoothadv-0.25.ckpt"
    assert ckpt.is_file() and not (crashed / "digits-cnn-smoothadv-0.25.safetensors").exists()

    code, _, err = cli(*_resume_args(crashed, "--param", "m=2"))
    assert code == 2 and "different training configuration" in err

    code, _, err = cli(*_resume_args(crashed))
    assert code == 0, err
    weights = crashed / "digits-cnn-smoothadv-0.25.safetensors"
    assert sha256_file(weights) == expected
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["resumed_from_epoch"] == 1 and not ckpt.exists()


def _ctx(dataset: str, **options) -> TrainContext:
    info = spec(dataset).info
    return TrainContext(dataset=info, sigma=0.25, device=torch.device("cpu"), seed=0,
                        train=(torch.zeros(1), torch.zeros(1)), test=(torch.zeros(1),
                                                                      torch.zeros(1)),
                        out_dir=".", name=None, options=options,
                        default_arch=spec(dataset).default_arch,
                        reference_augment=spec(dataset).reference_augment)


def test_recipes_project_on_digits_reference_with_crop_flip_on_cifar10():
    digits = train_settings(_ctx("digits"), "project", REFERENCE_RECIPE)
    assert (digits.schedule, digits.lr, digits.batch, digits.epochs) == ("cosine", 0.05, 64, 60)
    assert digits.augment == "none"
    cifar = train_settings(_ctx("cifar10", epochs=5), "reference", REFERENCE_RECIPE)
    assert (cifar.schedule, cifar.milestones, cifar.lr, cifar.batch) == ("multistep", (30, 60),
                                                                        0.1, 256)
    assert cifar.augment == "crop-flip" and cifar.epochs == 5
    assert recipe_name(_ctx("digits")) == "project"
    assert recipe_name(_ctx("cifar10")) == "reference"
    assert recipe_name(_ctx("cifar10", recipe="project")) == "project"
    with pytest.raises(ConfigError, match="unknown --recipe 'fast'"):
        recipe_name(_ctx("digits", recipe="fast"))
    # The papers' recipes: SmoothAdv/consistency split 256 images into m steps; MACER's own.
    salman = train_settings(_ctx("cifar10"), "reference", smoothadv_recipe(4))
    assert (salman.epochs, salman.batch, salman.milestones) == (150, 64, (50, 100))
    macer = train_settings(_ctx("cifar10"), "reference", MACER_RECIPE)
    assert (macer.epochs, macer.batch, macer.lr, macer.weight_decay) == (440, 64, 0.01, 5e-4)


def test_architecture_is_arch_option_else_the_dataset_default():
    assert _ctx("digits").arch() == "digits_cnn"
    assert _ctx("cifar10").arch() == "cifar_resnet110"
    assert _ctx("digits", arch="mnist_cnn").arch() == "mnist_cnn"


def test_params_are_typed_once_with_the_old_defaults_and_ranges():
    """Defaults (values and types) are hashed into run ids: they must not drift."""
    assert Macer().params == {"k": 16, "lbd": 12.0, "gamma": 8.0, "beta": 16.0, "deferred": 0}
    assert SmoothAdv().params == {"attack": "pgd", "epsilon": 0.25, "steps": 10, "m": 1,
                                  "multi_noise": True, "warmup": 10, "init_norm": 1.0,
                                  "ddn_gamma": 0.05}
    assert Consistency().params == {"m": 2, "lbd": 10.0, "eta": 0.5, "base": "gaussian",
                                    "epsilon": 0.5, "steps": 10, "warmup": 10}
    for method in (Macer(), SmoothAdv(), Consistency()):
        for name, value in method.params.items():
            assert type(value) is type(method.PARAMS[name].default), name
    lbd = Macer(lbd=4).params["lbd"]
    assert lbd == 4.0 and isinstance(lbd, float)  # an int for a float param becomes a float
    for cls, bad in [(Macer, {"k": 1}), (Macer, {"k": 2.5}), (Macer, {"lbd": -1}),
                     (Macer, {"deferred": -1}), (SmoothAdv, {"attack": "fgsm"}),
                     (SmoothAdv, {"steps": 0}), (SmoothAdv, {"multi_noise": "yes"}),
                     (SmoothAdv, {"ddn_gamma": -0.1}), (Consistency, {"base": "macer"}),
                     (Consistency, {"m": 0}), (Consistency, {"lbd": True})]:
        key = next(iter(bad))
        with pytest.raises(ConfigError, match=key):
            cls(**bad)


def test_crop_flip_moves_content_within_the_padding_and_is_seeded():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    a = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    b = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(a, b) and a.shape == x.shape
    for i in range(2):
        kept = a[i][a[i] > 0]  # every non-padding value comes from the same image
        assert set(kept.tolist()) <= set(x[i].flatten().tolist())
        assert kept.numel() >= 3 * 6 * 6  # at most `pad` rows/columns are lost per side
