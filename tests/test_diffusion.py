"""One-shot diffusion denoising: timestep rule, exact inversion, scaling, loading, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.contract import DatasetInfo
from bench.diffusion import (
    Denoiser,
    DiffusionModel,
    load_diffusers,
    noise_level,
    timestep_for_sigma,
)
from bench.errors import ConfigError, ModelError
from bench.nets import load_network

DIGITS = DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3761,))


def linear_abar(steps=1000, start=1e-4, end=0.02) -> torch.Tensor:
    betas = torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_abar(steps=4000, s=0.008) -> torch.Tensor:
    """improved-diffusion's cosine schedule: betas from f(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
    f = [math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(steps + 1)]
    betas = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(steps)],
                         dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


# algorithms.md 5.2: (t*, s_t / 2, sqrt(abar)) per sigma, indices into the abar array.
LINEAR = {0.12: (70, 0.1207, 0.972), 0.25: (145, 0.2516, 0.893), 0.5: (259, 0.5024, 0.705),
          1.0: (396, 1.0002, 0.447)}
COSINE = {0.12: (573, 0.1201, 0.972), 0.25: (1158, 0.2501, 0.894), 0.5: (1984, 0.5003, 0.707),
          1.0: (2809, 1.0000, 0.447)}


@pytest.mark.parametrize(("abar_fn", "table"), [(linear_abar, LINEAR), (cosine_abar, COSINE)])
def test_timestep_matches_the_spec_table(abar_fn, table):
    abar = abar_fn()
    s = noise_level(abar)
    for sigma, (t, half_s, root) in table.items():
        assert timestep_for_sigma(abar, sigma) == t
        assert s[t] / 2 == pytest.approx(half_s, abs=6e-5)
        assert math.sqrt(abar[t]) == pytest.approx(root, abs=6e-4)
        assert s[t] >= 2 * sigma > s[t - 1]  # the first t at or above 2 sigma


def test_timestep_on_a_hand_schedule():
    # s_t = sqrt((1 - a) / a): 1/3, 1, 2, 3 for a = 0.9, 0.5, 0.2, 0.1.
    abar = torch.tensor([0.9, 0.5, 0.2, 0.1], dtype=torch.float64)
    assert timestep_for_sigma(abar, 0.1) == 0  # 2 sigma = 0.2 <= 1/3
    assert timestep_for_sigma(abar, 0.4) == 1  # 0.8 <= 1; matching s_t to sigma would give 1
    assert timestep_for_sigma(abar, 0.6) == 2  # 1.2: the factor 2 moves it past s_1 = 1
    assert timestep_for_sigma(abar, 1.4) == 3
    with pytest.raises(ConfigError, match="never reaches noise level"):
        timestep_for_sigma(abar, 1.6)
    with pytest.raises(ConfigError, match="positive"):
        timestep_for_sigma(abar, 0.0)


def test_diffusers_scheduler_gives_the_same_timesteps():
    from diffusers import DDPMScheduler

    abar = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).alphas_cumprod
    assert [timestep_for_sigma(abar, s) for s in LINEAR] == [v[0] for v in LINEAR.values()]


class OracleEps(nn.Module):
    """Knows the clean images (in [-1, 1]) and returns the exact noise of x_t; records calls."""

    def __init__(self, x0: torch.Tensor, abar: torch.Tensor, extra_channels: int = 0):
        super().__init__()
        self.x0, self.abar, self.extra = x0, abar, extra_channels
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t, t):
        self.calls.append((x_t.clone(), t))
        a = float(self.abar[int(t)])
        eps = (x_t - math.sqrt(a) * self.x0) / math.sqrt(1 - a)
        if self.extra:
            eps = torch.cat([eps, torch.full_like(eps, 7.0)[:, : self.extra]], dim=1)
        return eps


@pytest.mark.parametrize("learned_variance", [False, True])
def test_oracle_noise_prediction_inverts_the_forward_process(learned_variance):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=gen)
    sigma = 0.5
    delta = sigma * torch.randn(x.shape, generator=gen)
    abar = linear_abar()
    oracle = OracleEps(2 * x - 1, abar, extra_channels=3 if learned_variance else 0)
    den = Denoiser(DiffusionModel(oracle, abar), sigma=sigma)
    out = den(x + delta)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    # The network saw sqrt(abar_t*) * (2 (x + delta) - 1) at t* = 259.
    x_t, t = oracle.calls[0]
    assert int(t) == 259 == den.t
    torch.testing.assert_close(x_t, math.sqrt(abar[259]) * (2 * (x + delta) - 1), atol=1e-6,
                               rtol=0)


def test_output_is_clipped_to_the_pixel_range():
    abar = linear_abar()

    class Far(nn.Module):
        def forward(self, x_t, t):
            return torch.full_like(x_t, -100.0)  # pushes x0_hat far above 1

    den = Denoiser(DiffusionModel(Far(), abar), sigma=0.25)
    out = den(torch.rand(4, 1, 8, 8))
    assert torch.equal(out, torch.ones_like(out))


def test_denoiser_rejects_a_wrong_channel_count():
    class Bad(nn.Module):
        def forward(self, x_t, t):
            return torch.zeros(x_t.shape[0], 5, *x_t.shape[2:])

    den = Denoiser(DiffusionModel(Bad(), linear_abar()), sigma=0.25)
    with pytest.raises(ModelError, match="returned 5 channels for 1-channel"):
        den(torch.rand(2, 1, 8, 8))


def test_describe_records_the_timestep():
    den = Denoiser(DiffusionModel(nn.Identity(), linear_abar()), sigma=0.25)
    info = den.describe()
    assert info["t_star"] == 145 and info["timesteps"] == 1000
    assert info["s_t_over_2"] == pytest.approx(0.2516, abs=1e-4)
    assert info["sqrt_alpha_bar"] == pytest.approx(0.893, abs=1e-3)


@pytest.fixture(scope="module")
def tiny_diffusers(tmp_path_factory):
    """A randomly initialised diffusers UNet + scheduler saved in the pipeline layout."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("ddpm") / "tiny-ddpm"
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_config(
        folder / "scheduler")
    return folder


def test_diffusers_folder_loads_through_the_registry_source(tiny_diffusers):
    model = load_network("tiny", {"source": "diffusers", "path": str(tiny_diffusers)},
                         dataset=DIGITS, base_dir=tiny_diffusers.parent)
    assert isinstance(model, DiffusionModel)
    assert len(model.checkpoint_sha256) == 64
    den = Denoiser(model, sigma=0.25)
    x = torch.rand(10, 1, 8, 8)
    with torch.inference_mode():
        out = den(x)
        # learned-variance output (2 channels) is cut to the image's 1; rows are independent
        parts = torch.cat([den(x[:3]), den(x[3:])])
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, parts, atol=1e-5, rtol=0)


def test_diffusers_errors_are_one_line(tiny_diffusers, tmp_path):
    with pytest.raises(ModelError, match="not found; set the entry's path") as exc:
        load_diffusers("missing", str(tmp_path / "nope" / "x"))
    assert "\n" not in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="is not a diffusers folder"):
        load_diffusers("empty", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="sha256"):
        load_network("tiny", {"source": "diffusers", "path": str(tiny_diffusers),
                              "sha256": "0" * 64}, dataset=DIGITS, base_dir=tmp_path)


def test_python_source_needs_a_module_class():
    with pytest.raises(ConfigError, match="module:Class"):
        load_network("p", {"source": "python", "path": "nocolon"}, dataset=DIGITS, base_dir=".")
    with pytest.raises(ConfigError, match="cannot import"):
        load_network("p", {"source": "python", "path": "no_such_mod_xyz:Den"}, dataset=DIGITS,
                     base_dir=".")


def test_registry_validates_library_sources(tmp_path):
    from bench.registry.entries import load_registry

    def load(text):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        return load_registry(path)

    reg = load("models:\n  v: {source: timm, arch: resnet18, mean: [0.5], std: [0.5]}\n")
    assert reg.models["v"]["source"] == "timm"
    with pytest.raises(ConfigError, match=r"models\.v\.arch: missing"):
        load("models:\n  v: {source: torchvision}\n")
    with pytest.raises(ConfigError, match=r"models\.d\.path: missing \(a diffusers folder"):
        load("models:\n  d: {source: diffusers}\n")
    with pytest.raises(ConfigError, match=r"models\.v\.std: expected a list"):
        load("models:\n  v: {source: timm, arch: resnet18, std: [0]}\n")


def test_timm_unknown_model_is_one_line():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net_xyz'"):
        load_network("t", {"source": "timm", "arch": "no_such_net_xyz"}, dataset=DIGITS,
                     base_dir=".")


def test_timm_local_weights_get_resize_and_normalization(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "r18.safetensors"
    save_file(net.state_dict(), str(path))
    model = load_network("r18", {"source": "timm", "arch": "resnet18", "path": str(path),
                                 "num_classes": 10, "image_size": 32, "mean": [0.5, 0.5, 0.5],
                                 "std": [0.25, 0.25, 0.25]}, dataset=DIGITS, base_dir=tmp_path)
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        got = model(x)
        up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", antialias=True)
        want = net.eval()((up.expand(-1, 3, -1, -1) - 0.5) / 0.25)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_space_to_depth_unet_is_its_inner_unet_on_unshuffled_images(tmp_path):
    """Fashion-MNIST's denoisers run at half resolution on 4x the channels: the wrapper must be
    exactly pixel_unshuffle -> UNet -> pixel_shuffle, survive a save/load through the folder's
    card, and refuse sides it cannot split."""
    import json

    import torch.nn.functional as F

    from bench.diffusion import SpaceToDepthUNet, load_diffusers
    from bench.training.ddpm import SCHEDULE, build_unet, space_to_depth_factor

    assert space_to_depth_factor((1, 28, 28)) == 2 and space_to_depth_factor((1, 8, 8)) == 1
    assert space_to_depth_factor((3, 25, 25)) == 1
    torch.manual_seed(0)
    net = build_unet((1, 28, 28)).eval()
    assert isinstance(net, SpaceToDepthUNet) and net.unet.config.in_channels == 4
    x, t = torch.randn(3, 1, 28, 28), torch.tensor(40)
    with torch.no_grad():
        inner = net.unet(F.pixel_unshuffle(x, 2), t).sample
        assert torch.equal(net(x, t).sample, F.pixel_shuffle(inner, 2))
    from diffusers import DDPMScheduler

    net.save_pretrained(tmp_path / "unet", safe_serialization=True)
    DDPMScheduler(**SCHEDULE).save_config(tmp_path / "scheduler")
    (tmp_path / "card.json").write_text(json.dumps({"space_to_depth": 2}))
    loaded = load_diffusers("s2d", str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded(x, 40), net(x, t).sample)
    with pytest.raises(ModelError, match="divisible by 2"):
        loaded(torch.randn(1, 1, 27, 27), 40)
