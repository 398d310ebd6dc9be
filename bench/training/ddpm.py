"""Train a small DDPM (Ho et al. 2020) to serve as the denoiser of DDS/DiffSmooth on small data.

Standard epsilon-prediction objective, linear beta schedule 1e-4..0.02 over T=1000 steps, a
small diffusers ``UNet2DModel`` and an EMA of its weights (the EMA is what gets saved). The
result is a diffusers-format folder (``unet/`` + ``scheduler/``) loadable by
:func:`bench.diffusion.load_denoiser`. Training is seeded and resumes from a per-epoch
checkpoint in ``<out>/<name>.partial/`` (removed once the folder is written).

It lives in the harness because it is a training loop, not a certification method: the
``ddpm`` adapter only hands its TrainContext here. The card's accuracy numbers judge the
denoiser with a registered reference classifier that the context loads (hash-checked) by name.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.contract import TrainContext
from bench.diffusion import Denoiser, SpaceToDepthUNet
from bench.errors import CertbenchError
from bench.nets import sha256_file
from bench.progress import progress
from bench.training.loop import Resumable, training_generators

# Sized for 8x8 digits on a CPU: ~0.7M parameters, a few thousand one-shot denoisings/s.
UNET_CONFIG = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
            "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": True}
TRAIN_DEFAULTS = {"epochs": 150, "batch": 128, "lr": 2e-3}
EMA_DECAY = 0.999
# The registered classifier that judges a denoiser in its model card, per dataset.
EVAL_CLASSIFIERS = {"digits": "digits-cnn-gaussian-0.25",
                    "fashion-mnist": "fashion-mnist-cnn-clean"}  # DDS's own classifier


def space_to_depth_factor(shape: tuple[int, int, int]) -> int:
    """2 for images of at least 24 pixels a side (even sides), else 1: the UNet then runs at
    half resolution on 4x the channels (:class:`bench.diffusion.SpaceToDepthUNet`). Measured on
    28x28 with this UNet on 2 CPU cores: 144 one-shot denoisings/s at full resolution, 1,417/s
    space-to-depth (94 instead of 372 MFLOPs a pass): what makes B = 10,000 predictions per
    image affordable on a CPU. 8x8 digits keep the plain UNet (their zoo is unchanged)."""
    _, h, w = shape
    return 2 if min(h, w) >= 24 and h % 2 == 0 and w % 2 == 0 else 1


def build_unet(shape: tuple[int, int, int], **extra):
    """The project's small UNet2DModel for ``shape`` (C, H, W), space-to-depth where
    :func:`space_to_depth_factor` says so; ``extra`` goes to UNet2DModel (class embeddings)."""
    from diffusers import UNet2DModel  # lazy: diffusers takes seconds to import

    c, h, _ = shape
    f = space_to_depth_factor(shape)
    unet = UNet2DModel(sample_size=h // f, in_channels=c * f * f, out_channels=c * f * f,
                       **UNET_CONFIG, **extra)
    return SpaceToDepthUNet(unet, f) if f > 1 else unet


def train_ddpm(ctx: TrainContext) -> dict[str, Any]:
    """Fit the UNet with the epsilon objective; write the diffusers folder + card."""
    info = ctx.dataset
    torch.manual_seed(ctx.seed)
    unet = build_unet(info.shape)
    card = {"method": "ddpm", "arch": "diffusers-unet2d", "dataset": info.name,
            "sigma": ctx.sigma,  # only the noise level of the card's denoised-accuracy check
            "objective": "epsilon MSE, t ~ U{0..T-1}"}
    return fit_ddpm(ctx, unet, name=ctx.name or f"{info.name}-ddpm", defaults=TRAIN_DEFAULTS,
                    desc=f"ddpm {info.name}", card=card,
                    measure=lambda ema, abar: _denoised_accuracy(ema, ctx))


def fit_ddpm(ctx: TrainContext, unet, *, name: str, defaults: dict[str, Any], desc: str,
             card: dict[str, Any], labels: torch.Tensor | None = None,
             identity: dict[str, Any] | None = None,
             measure: Callable[[Any, torch.Tensor], dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    """The DDPM training loop every diffusion trainer shares: epsilon MSE with t ~ U{0..T-1}
    on ``ctx.train`` (``class_labels=labels[batch]`` when given: a class-conditional UNet),
    AdamW with a one-cycle schedule, an EMA of the weights, a per-epoch checkpoint in
    ``<out>/<name>.partial/`` (resumed when ``identity`` matches), then the EMA saved as a
    diffusers folder with ``card`` (plus the training record and ``measure(ema, abar)``)."""
    from diffusers import DDPMScheduler  # lazy: diffusers takes seconds to import

    opts = {k: ctx.options.get(k) or v for k, v in defaults.items()}
    out = Path(ctx.out_dir) / name
    partial = Path(ctx.out_dir) / f"{name}.partial"
    device = ctx.device
    scheduler = DDPMScheduler(**SCHEDULE)
    abar = scheduler.alphas_cumprod.to(device)

    unet = unet.to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    x_train = ctx.train[0].to(device) * 2 - 1  # the model lives in [-1, 1]
    if labels is not None:
        labels = labels.to(device).long()
    steps_per_epoch = -(-len(x_train) // opts["batch"])
    opt = torch.optim.AdamW(unet.parameters(), lr=opts["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opts["lr"], pct_start=0.05,
                                                total_steps=opts["epochs"] * steps_per_epoch)
    gens = training_generators(ctx.seed, device)
    state: dict[str, Any] = {"epoch": 0, "seconds": 0.0, "losses": []}
    unet_config = {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_CONFIG.items()}
    if isinstance(unet, SpaceToDepthUNet):  # only then: digits checkpoints resume as before
        unet_config["space_to_depth"] = unet.factor
    identity = {"seed": ctx.seed, **opts, **(identity or {}), "unet": unet_config}
    resumable = Resumable(partial / "checkpoint.pt", identity,
                          {"unet": unet, "ema": ema, "opt": opt, "sched": sched}, gens, device,
                          mismatch=f"{{path}} is from a different configuration; delete "
                                   f"{partial} to start over")
    saved = resumable.resume()
    if saved is not None:
        state = saved["state"]

    bar = progress(range(state["epoch"], opts["epochs"]), desc=desc, unit="epoch",
                   disable=not ctx.progress, dynamic_ncols=True, initial=state["epoch"],
                   total=opts["epochs"])
    for epoch in bar:
        start = time.perf_counter()
        unet.train()
        order = torch.randperm(len(x_train), generator=gens["shuffle"]).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x_train), opts["batch"]):
            idx = order[i : i + opts["batch"]]
            x0 = x_train[idx]
            t = torch.randint(0, len(abar), (len(x0),), generator=gens["noise"], device=device)
            eps = torch.randn(x0.shape, generator=gens["noise"], device=device)
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            cond = {} if labels is None else {"class_labels": labels[idx]}
            loss = torch.nn.functional.mse_loss(unet(xt, t, **cond).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                    pe.lerp_(p, 1 - EMA_DECAY)
            total += loss.detach() * len(x0)
        state["losses"].append(float(total) / len(x_train))
        state["epoch"] = epoch + 1
        state["seconds"] += time.perf_counter() - start
        bar.set_postfix(loss=f"{state['losses'][-1]:.4f}")
        resumable.save(state=state)

    ema = ema.to("cpu")
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    ema.save_pretrained(tmp_out / "unet", safe_serialization=True)
    scheduler.save_config(tmp_out / "scheduler")
    card = {
        "name": name, **card, "schedule": SCHEDULE, "unet": unet_config,
        **({"space_to_depth": unet.factor} if isinstance(unet, SpaceToDepthUNet) else {}),
        "parameters": sum(p.numel() for p in ema.parameters()), "ema_decay": EMA_DECAY,
        "epochs": opts["epochs"], "batch": opts["batch"], "lr": opts["lr"],
        "optimizer": "AdamW, one-cycle schedule", "seed": ctx.seed,
        "train_images": len(x_train), "final_loss": round(state["losses"][-1], 5),
        "loss_every_10_epochs": [round(v, 4) for v in state["losses"][::10]],
        "train_seconds": round(state["seconds"], 1), "device": str(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": ctx.command,
    }
    if measure is not None:
        card.update(measure(ema, abar.cpu()))
    (tmp_out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.replace(out)
    shutil.rmtree(partial, ignore_errors=True)
    card["sha256"] = sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    return {**card, "weights": str(out)}


def _denoised_accuracy(unet, ctx: TrainContext) -> dict[str, Any]:
    """Accuracy of the dataset's reference classifier (:data:`EVAL_CLASSIFIERS`) on clean and on
    one-shot-denoised test images at ``ctx.sigma`` (what ``bench train`` prints as clean/noisy
    accuracy for this method). NaN when there is no reference: none for this dataset, no
    registry at hand, or it does not load (the card is still useful without the numbers)."""
    from diffusers import DDPMScheduler  # lazy: diffusers takes seconds to import

    missing = {"clean_accuracy": float("nan"), "noisy_accuracy": float("nan")}
    name = EVAL_CLASSIFIERS.get(ctx.dataset.name)
    if name is None or ctx.registered_model is None:
        return missing
    try:
        net = ctx.registered_model(name)
    except CertbenchError:
        return missing
    net = net.to("cpu").eval()  # the EMA UNet and the test tensors are on the CPU
    den = Denoiser(unet, DDPMScheduler(**SCHEDULE).alphas_cumprod, ctx.sigma)
    x, y = ctx.test
    gen = torch.Generator().manual_seed(ctx.seed)
    with torch.inference_mode():
        clean = (net(x).argmax(1) == y).float().mean().item()
        noisy = x + ctx.sigma * torch.randn(x.shape, generator=gen)
        hits = (net(den(noisy)).argmax(1) == y).float().mean().item()
    return {"clean_accuracy": round(clean, 4), "noisy_accuracy": round(hits, 4),
            "eval": f"{name} on clean / one-shot-denoised (sigma {ctx.sigma:g}) test images"}
