"""One-shot diffusion denoising for denoised smoothing (DDS, DiffSmooth).

A DDPM trained on images in [-1, 1] sees ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, i.e.
``sqrt(abar_t) (x0 + s_t eps)`` with ``s_t = sqrt((1 - abar_t) / abar_t)``. The harness hands
us ``x + delta`` in [0, 1] pixels with delta ~ N(0, sigma^2): mapped to [-1, 1] that is
``x0 + 2 delta``, so the matching timestep is the first t with ``s_t >= 2 sigma`` (the factor 2
of the range) and the model input is ``sqrt(abar_t*) (2 (x + delta) - 1)``. The noise is the
harness's, never drawn here. One network call per sample predicts eps; ``x0_hat = z' - s_t eps``
is clipped to [-1, 1] and mapped back to [0, 1].

Denoisers are a :class:`DiffusionModel`: an eps-network called as ``net(x_t, t)`` plus its
``alphas_cumprod``. They come from a diffusers folder (``UNet2DModel`` + ``DDPMScheduler``, local
or on the Hub) or from any ``module:Class`` whose instances have ``alphas_cumprod`` and are
callable like that (registry ``source: python``). A folder whose ``card.json`` says
``space_to_depth: f`` holds a UNet trained on f x f space-to-depth images
(:class:`SpaceToDepthUNet`, certbench's own small denoisers for 28x28 data).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.contract import Cost
from bench.errors import ConfigError, ModelError
from bench.registry.adapters import import_adapter_module


def noise_level(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """s_t = sqrt((1 - abar_t) / abar_t): the noise std, relative to the signal, at each t."""
    abar = alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The first index t of ``alphas_cumprod`` with s_t >= 2 sigma (sigma in [0, 1] pixels).

    Indices are those of the array (diffusers' timestep t uses ``alphas_cumprod[t]``).
    """
    if not sigma > 0:
        raise ConfigError(f"sigma must be positive for denoising, got {sigma:g}")
    s = noise_level(alphas_cumprod)
    above = torch.nonzero(s >= 2 * sigma)
    if len(above) == 0:
        raise ConfigError(
            f"the diffusion model's schedule never reaches noise level 2*sigma = {2 * sigma:g} "
            f"(its largest s_t is {float(s[-1]):.3g}); use a smaller --sigma"
        )
    return int(above[0, 0])


class DiffusionModel(nn.Module):
    """An eps-prediction network with its noise schedule; ``forward(x_t, t)`` returns eps.

    ``timestep_scale`` multiplies t before the call (improved-diffusion's rescaled timesteps).
    """

    def __init__(self, net: nn.Module, alphas_cumprod, *, timestep_scale: float = 1.0,
                 description: str = ""):
        super().__init__()
        self.net = net
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ModelError("alphas_cumprod must hold at least two values in (0, 1)")
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.timestep_scale = float(timestep_scale)
        self.description = description

    def forward(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        step = torch.tensor(t * self.timestep_scale, device=x_t.device)
        if self.timestep_scale == 1.0:
            step = step.long()
        out = self.net(x_t, step)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


class SpaceToDepthUNet(nn.Module):
    """A UNet2DModel that sees f x f space-to-depth images: (C, H, W) becomes (f*f*C, H/f, W/f)
    by ``pixel_unshuffle`` and back by ``pixel_shuffle``. The same map of x_t to eps at a
    fraction of the cost (on 28x28 Fashion-MNIST, f = 2 makes a 0.65M-parameter UNet about ten
    times faster on a CPU than at full resolution). Called like a UNet2DModel (``.sample``);
    ``save_pretrained`` and ``config`` are the inner UNet's (the factor lives in the folder's
    card.json, key ``space_to_depth``)."""

    def __init__(self, unet: nn.Module, factor: int):
        super().__init__()
        if factor < 2:
            raise ModelError(f"space_to_depth must be at least 2, got {factor}")
        self.unet, self.factor = unet, int(factor)

    @property
    def config(self):
        return self.unet.config

    def forward(self, x_t: torch.Tensor, t, class_labels=None) -> SimpleNamespace:
        f = self.factor
        if x_t.shape[-1] % f or x_t.shape[-2] % f:
            raise ModelError(f"a space-to-depth (factor {f}) denoiser needs image sides "
                             f"divisible by {f}, got {tuple(x_t.shape[-2:])}")
        cond = {} if class_labels is None else {"class_labels": class_labels}
        out = self.unet(F.pixel_unshuffle(x_t, f), t, **cond).sample
        return SimpleNamespace(sample=F.pixel_shuffle(out, f))

    def save_pretrained(self, path, **kwargs) -> None:
        self.unet.save_pretrained(path, **kwargs)


def inner_unet(net: nn.Module) -> nn.Module:
    """The diffusers UNet of a (possibly space-to-depth) denoiser network."""
    return net.unet if isinstance(net, SpaceToDepthUNet) else net


class Denoiser(nn.Module):
    """x + delta in [0, 1] -> one-shot estimate of x in [0, 1], at the t* matching sigma."""

    def __init__(self, model: DiffusionModel | nn.Module, alphas_cumprod=None,
                 sigma: float = 0.25):
        super().__init__()
        if not isinstance(model, DiffusionModel):
            model = DiffusionModel(model, alphas_cumprod)
        self.model = model
        abar = model.alphas_cumprod
        self.sigma = float(sigma)
        self.t = timestep_for_sigma(abar, sigma)
        a = float(abar[self.t])
        self.sqrt_abar = math.sqrt(a)
        self.s_t = math.sqrt((1 - a) / a)

    def describe(self) -> dict[str, Any]:
        """Card info: the timestep and the noise level it assumes, next to the target 2 sigma."""
        return {"t_star": self.t, "timesteps": int(self.model.alphas_cumprod.numel()),
                "sqrt_alpha_bar": round(self.sqrt_abar, 6), "s_t": round(self.s_t, 6),
                "s_t_over_2": round(self.s_t / 2, 6), "sigma": self.sigma,
                "timestep_scale": self.model.timestep_scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x * 2 - 1  # [-1, 1] range: the pixel noise delta is now 2 delta
        eps = self.model(z * self.sqrt_abar, self.t)
        c = z.shape[1]
        if eps.shape[1] == 2 * c:  # learned variance: eps first, then the variance channels
            eps = eps[:, :c]
        elif eps.shape[1] != c:
            raise ModelError(f"the denoiser returned {eps.shape[1]} channels for {c}-channel "
                             f"images (expected {c} or {2 * c} with learned variance)")
        # (x_t - sqrt(1 - abar) eps) / sqrt(abar) = z - s_t eps, without the division.
        x0 = torch.add(z, eps.to(z.dtype), alpha=-self.s_t).clamp_(-1, 1)
        return x0.add_(1).mul_(0.5)


class DenoisedClassifier(nn.Module):
    """Noisy images in [0, 1] -> logits of a classifier on their one-shot denoising (DDS's base
    classifier, and multi-scale smoothing's at each scale). One diffusion and one classifier
    pass per noisy sample."""

    def __init__(self, denoiser: Denoiser, classifier: nn.Module, num_classes: int):
        super().__init__()

        self.denoiser, self.classifier = denoiser, classifier
        self.num_classes = num_classes
        self.cost = Cost(m=1, classifier_passes=1, diffusion_passes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))

    def describe(self) -> dict[str, Any]:
        return {"denoiser": self.denoiser.describe()}


# ----------------------------------------------------------------------------------------------
# Loading


def load_diffusers(name: str, location: str, device: torch.device | str = "cpu") -> DiffusionModel:
    """A diffusers ``UNet2DModel`` + ``DDPMScheduler`` from a local folder or a Hub repo id.

    Folders may hold ``unet/`` + ``scheduler/`` (pipeline layout) or both configs at the top.
    """
    from diffusers import DDPMScheduler, UNet2DModel  # lazy: diffusers takes seconds to import

    folder = Path(location).expanduser()
    if folder.is_dir():
        unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
        sched_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
        if not (unet_dir / "config.json").is_file():
            raise ModelError(f"model {name}: {folder} is not a diffusers folder (no config.json "
                             "at the top or in unet/)")
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
            sched = DDPMScheduler.from_pretrained(sched_dir)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {name}: cannot load the diffusers model in {folder} "
                             f"({_first_line(exc)})") from exc
        factor = int(card_of(folder).get("space_to_depth", 1))
        if factor > 1:
            unet = SpaceToDepthUNet(unet, factor)
        return _wrap(name, unet, sched, device, str(folder))
    if location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise ModelError(f"model {name}: diffusers folder {folder} not found; set the entry's "
                         "path to a local folder or a Hub repo id such as google/ddpm-cifar10-32")
    unet = sched = None
    errors = []
    for local_only in (True, False):
        try:
            unet = _from_hub(UNet2DModel, location, local_only, "unet")
            sched = _from_hub(DDPMScheduler, location, local_only, "scheduler")
            break
        except (OSError, ValueError) as exc:
            errors.append(_first_line(exc))
    if unet is None or sched is None:
        raise ModelError(
            f"model {name}: diffusers model {location!r} is not in the local Hugging Face cache "
            f"and could not be downloaded ({errors[-1]}); when online run "
            f"'huggingface-cli download {location} --local-dir DIR' and set the entry's path "
            "to DIR"
        )
    return _wrap(name, unet, sched, device, location)


def _from_hub(cls, repo: str, local_only: bool, subfolder: str):
    extra = {"low_cpu_mem_usage": False} if hasattr(cls, "save_pretrained") else {}
    try:
        return cls.from_pretrained(repo, local_files_only=local_only, **extra)
    except (OSError, ValueError):
        return cls.from_pretrained(repo, subfolder=subfolder, local_files_only=local_only,
                                   **extra)


def _wrap(name, unet, sched, device, origin: str) -> DiffusionModel:
    if getattr(sched.config, "prediction_type", "epsilon") != "epsilon":
        raise ModelError(f"model {name}: prediction_type {sched.config.prediction_type!r} is not "
                         "supported; one-shot denoising here needs an epsilon-prediction model")
    model = DiffusionModel(unet, sched.alphas_cumprod, description=f"diffusers {origin}")
    return model.to(device).eval()


def load_python(name: str, target: str, device: torch.device | str = "cpu") -> DiffusionModel:
    """A custom denoiser ``module:Class``: instances have ``alphas_cumprod`` and map
    (x_t, t) to eps."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model {name}: path must be 'module:Class' for source python, "
                          f"got {target!r}")
    try:
        obj = getattr(import_adapter_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model {name}: cannot import {target!r} ({exc})") from exc
    net = obj() if isinstance(obj, type) or not isinstance(obj, nn.Module) else obj
    abar = getattr(net, "alphas_cumprod", None)
    if abar is None:
        raise ModelError(f"model {name}: {target} has no alphas_cumprod attribute")
    scale = float(getattr(net, "timestep_scale", 1.0))
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {name}: {target} must build a torch.nn.Module")
    return DiffusionModel(net, abar, timestep_scale=scale,
                          description=f"python {target}").to(device).eval()


def card_of(folder: Path) -> dict[str, Any]:
    """The model card a local diffusers folder ships, if any."""
    path = Path(folder) / "card.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_shot_denoiser(ctx, override: str | None = None) -> Denoiser:
    """The run's ``denoiser`` model (``override``: a registered model, a local diffusers folder,
    a Hub id or a ``module:Class``; else the registry's choice) at the run's sigma."""
    model = ctx.model("denoiser", override=override)
    if not isinstance(model, DiffusionModel):
        name = ctx.model_ref("denoiser").name
        raise ConfigError(f"model {name!r} is not a denoiser (use source diffusers or python)")
    return Denoiser(model, sigma=ctx.sigma).to(ctx.device).eval()
