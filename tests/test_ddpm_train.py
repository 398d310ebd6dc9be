"""`python -m bench train --method ddpm`: a diffusers folder the registry and DDS can use."""

from __future__ import annotations

import torch
import yaml

from bench.diffusion import Denoiser
from bench.nets.loaders import load_network
from bench.protocol import DatasetInfo


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
