"""`python -m bench train --method ddpm`: a diffusers folder the registry and DDS can use."""

from __future__ import annotations

import math

import torch
import yaml

from bench.contract import DatasetInfo, TrainContext
from bench.data.specs import spec
from bench.diffusion import Denoiser
from bench.errors import ModelError
from bench.nets.loaders import load_network
from bench.training.ddpm import EVAL_CLASSIFIERS, _denoised_accuracy, build_unet


def test_one_epoch_of_ddpm_training_gives_a_usable_denoiser(cli, tmp_path):
    code, out, err = cli("train", "--method", "ddpm", "--dataset", "digits", "--epochs", "1",
                         "--out", tmp_path, "--name", "tiny-ddpm", "--quiet")
    assert code == 0, err
    folder = tmp_path / "tiny-ddpm"
    assert (folder / "unet" / "config.json").is_file()
    entry = yaml.safe_load(out.split("registry entry:", 1)[1])["models"]["tiny-ddpm"]
    # A denoiser is a diffusers folder serving every sigma: no arch, no sigma.
    assert entry["source"] == "diffusers" and "arch" not in entry and "sigma" not in entry
    assert entry["path"] == str(folder) and len(entry["sha256"]) == 64
    info = DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3761,))
    model = load_network("tiny-ddpm", entry, dataset=info, base_dir=tmp_path)
    x = torch.rand(4, 1, 8, 8)
    with torch.inference_mode():
        y = Denoiser(model, sigma=0.5)(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def _ddpm_ctx(dataset: str, registered_model) -> TrainContext:
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([3, 3, 3, 1, 2, 3])
    return TrainContext(dataset=spec(dataset).info, sigma=0.5, device=torch.device("cpu"),
                        seed=0, train=(x, y), test=(x, y), out_dir=".", name=None,
                        registered_model=registered_model)


def test_the_denoiser_card_is_judged_by_a_registered_classifier_else_nan():
    """The reference classifier comes from the TrainContext (hash-checked by the trainer),
    never from a hard-coded registry path; without one the card records NaN."""
    asked = []

    class Always3(torch.nn.Module):
        def forward(self, x):
            asked.append(x.shape)
            return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()

    def registered(name):
        asked.append(name)
        return Always3()

    unet = build_unet((1, 8, 8)).eval()
    card = _denoised_accuracy(unet, _ddpm_ctx("digits", registered))
    assert asked[0] == EVAL_CLASSIFIERS["digits"] == "digits-cnn-gaussian-0.25"
    assert card["clean_accuracy"] == card["noisy_accuracy"] == round(4 / 6, 4)
    assert card["eval"].startswith("digits-cnn-gaussian-0.25 on clean")

    def broken(name):
        raise ModelError(f"{name}: sha256 mismatch")

    for ctx in (_ddpm_ctx("digits", None), _ddpm_ctx("digits", broken),
                _ddpm_ctx("mnist", registered)):  # no reference classifier for mnist
        card = _denoised_accuracy(unet, ctx)
        assert math.isnan(card["clean_accuracy"]) and math.isnan(card["noisy_accuracy"])
    assert asked.count("digits-cnn-gaussian-0.25") == 1
