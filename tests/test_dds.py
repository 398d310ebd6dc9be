"""DDS: classifier(denoise(x + delta)), its cost, its card, and the shipped digits models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.certify.smoothing import Smooth
from bench.diffusion import Denoiser, DiffusionModel
from bench.nets.loaders import ZOO_DIR
from methods.dds import DDSClassifier


def linear_abar():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


class KnowsX(nn.Module):
    """An oracle eps-network for images all equal to ``x0`` (in [-1, 1])."""

    def __init__(self, x0, abar):
        super().__init__()
        self.x0, self.abar = x0, abar

    def forward(self, x_t, t):
        a = float(self.abar[int(t)])
        return (x_t - math.sqrt(a) * self.x0) / math.sqrt(1 - a)


def test_dds_with_an_exact_denoiser_classifies_the_clean_image():
    """With exact noise prediction f(x + delta) = clf(x) for every delta: p_A = 1."""
    abar = linear_abar()
    x = torch.rand(1, 8, 8)
    den = Denoiser(DiffusionModel(KnowsX(2 * x - 1, abar), abar), sigma=1.0)
    seen = []

    class Clf(nn.Module):
        def forward(self, z):
            seen.append(z.clone())
            return torch.nn.functional.one_hot(torch.full((z.shape[0],), 2), 4).float()

    base = DDSClassifier(den, Clf(), 4)
    cert = Smooth(base, 4, 1.0).certify_record(x, 10, 200, 0.001, 64)
    assert cert.counts_estimate == [0, 0, 200, 0] and cert.prediction == 2
    assert (cert.classifier_passes, cert.diffusion_passes) == (210, 210)
    torch.testing.assert_close(torch.cat(seen), x.expand(210, 1, 8, 8), atol=1e-5, rtol=0)
    assert base.describe()["denoiser"]["t_star"] == 396


def test_dds_run_records_timestep_and_cost(cli, tmp_path, toy_registry):
    code, out, err = cli("run", "--method", "dds", "--dataset", "digits", "--n", "200",
                         "--n0", "20", "--max-images", "2", "--quiet", "--results",
                         tmp_path / "res", "--extra-registry", toy_registry,
                         "--param", "denoiser=toy-zero-eps")
    assert code == 0, err
    assert "220 classifier + 220 diffusion passes" in out
    summary = json.loads(next(Path(tmp_path / "res").rglob("summary.json")).read_text())
    assert summary["base_classifier"]["denoiser"]["t_star"] == 145
    assert summary["cost_per_sample"] == {"classifier_passes": 1, "diffusion_passes": 1}
    assert set(summary["identity"]["models"]) == {"toy-zero-eps", "digits-cnn-clean"}


def test_dds_bad_denoiser_is_one_line(cli, tmp_path):
    code, out, err = cli("run", "--method", "dds", "--dataset", "digits", "--n", "10",
                         "--max-images", "1", "--quiet", "--results", tmp_path,
                         "--param", f"denoiser={tmp_path / 'no-such-folder'}")
    assert code != 0 and "is neither a registered model nor an existing file" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli("run", "--method", "dds", "--dataset", "digits", "--n", "10",
                         "--max-images", "1", "--quiet", "--results", tmp_path,
                         "--param", "denoiser=digits-cnn-clean")
    assert code != 0 and "is not a denoiser" in err


@pytest.mark.slow
@pytest.mark.skipif(not (ZOO_DIR / "digits-ddpm").is_dir(), reason="digits-ddpm not trained")
def test_shipped_digits_ddpm_denoises(cli, tmp_path):
    """The zoo DDPM + clean classifier beat the clean classifier on raw noisy images."""
    from bench.data import loaders
    from bench.nets import load_network
    from bench.registry.entries import load_registry

    reg = load_registry(ZOO_DIR.parent.parent / "registry.yaml")
    ds = loaders.load_split("digits", "test")
    x, y = ds.tensors()
    den = Denoiser(load_network("digits-ddpm", reg.models["digits-ddpm"].fields,
                                dataset=ds.info, base_dir=tmp_path), sigma=0.5)
    clf = load_network("digits-cnn-clean", reg.models["digits-cnn-clean"].fields,
                       dataset=ds.info, base_dir=tmp_path)
    noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        raw = (clf(noisy).argmax(1) == y).float().mean().item()
        denoised = (clf(den(noisy)).argmax(1) == y).float().mean().item()
    assert denoised > raw + 0.1, (raw, denoised)
    code, out, err = cli("run", "--method", "dds", "--dataset", "digits", "--n", "500",
                         "--max-images", "3", "--quiet", "--results", tmp_path / "res")
    assert code == 0, err
