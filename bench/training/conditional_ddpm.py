"""Train a small class-conditional DDPM: the classifier of the noised diffusion classifiers (NDC).

The same epsilon objective, linear beta schedule (T = 1000) and UNet as the unconditional
denoiser of :mod:`bench.training.ddpm` (its ``SCHEDULE`` and ``UNET_CONFIG`` are imported, not
copied), plus a learned class embedding (``num_class_embeds = K``, added to the timestep
embedding): the network is called as ``unet(x_t, t, class_labels=y)``. No label dropout: NDC only
needs the conditional scores (no classifier-free guidance), so every example keeps its label.

Seeded and resumable exactly as the unconditional trainer: a per-epoch checkpoint in
``<out>/<name>.partial/`` (weights, EMA, optimizer, one-cycle schedule, the shuffling and noise
generators' states, and an identity dict that must match to resume); rerunning the same command
gives the same weights bit for bit on the same device and thread count. The EMA weights are saved
as a diffusers folder ``<out>/<name>`` (``unet/`` + ``scheduler/``, default name
``<dataset>-ddpm-cond``) with ``card.json``; the returned card carries the weights' sha256.

The card also records a cheap sanity check of the class conditioning: the test-set epsilon MSE
with the true label and with a wrong label (same t and eps draws). A conditional model whose
labels matter shows a clear gap; it is what the diffusion classifier turns into a decision.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.errors import ConfigError
from bench.nets import sha256_file
from bench.protocol import TrainContext
from bench.training.ddpm import EMA_DECAY, SCHEDULE, UNET_CONFIG
from bench.training.loop import load_training_checkpoint

TRAIN_DEFAULTS = {"epochs": 200, "batch": 128, "lr": 2e-3}
# The card's label check: test-set eps MSE at these timesteps, true vs wrong label.
CHECK_TIMESTEPS = (50, 150, 300, 500)


def build_conditional_unet(shape: tuple[int, int, int], num_classes: int):
    """The unconditional digits UNet plus a class embedding (``class_labels=y``)."""
    from diffusers import UNet2DModel

    c, h, _ = shape
    return UNet2DModel(sample_size=h, in_channels=c, out_channels=c,
                       num_class_embeds=num_classes, **UNET_CONFIG)


def train_conditional_ddpm(ctx: TrainContext) -> dict[str, Any]:
    """Fit the class-conditional UNet with the epsilon objective; write the folder + card."""
    from diffusers import DDPMScheduler

    info = ctx.dataset
    opts = {k: ctx.options.get(k) or v for k, v in TRAIN_DEFAULTS.items()}
    name = ctx.name or f"{info.name}-ddpm-cond"
    out = Path(ctx.out_dir) / name
    partial = Path(ctx.out_dir) / f"{name}.partial"
    device = ctx.device
    scheduler = DDPMScheduler(**SCHEDULE)
    abar = scheduler.alphas_cumprod.to(device)
    k = int(info.num_classes)

    torch.manual_seed(ctx.seed)
    unet = build_conditional_unet(info.shape, k).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    x_train = ctx.train[0].to(device) * 2 - 1  # the model lives in [-1, 1]
    y_train = ctx.train[1].to(device).long()
    if len(x_train) == 0:
        raise ConfigError("no training images")
    if int(y_train.min()) < 0 or int(y_train.max()) >= k:
        raise ConfigError(f"labels must be in 0..{k - 1} for {info.name}")
    steps_per_epoch = -(-len(x_train) // opts["batch"])
    opt = torch.optim.AdamW(unet.parameters(), lr=opts["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opts["lr"], pct_start=0.05,
                                                total_steps=opts["epochs"] * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(ctx.seed)
    noise_gen = torch.Generator(device=device).manual_seed(ctx.seed + 1)
    state: dict[str, Any] = {"epoch": 0, "seconds": 0.0, "losses": []}
    identity = {"seed": ctx.seed, **opts, "conditional": True, "num_classes": k,
                "label_dropout": 0.0,
                "unet": {key: list(v) if isinstance(v, tuple) else v
                         for key, v in UNET_CONFIG.items()}}
    ckpt_path = partial / "checkpoint.pt"
    if ckpt_path.is_file():
        saved = load_training_checkpoint(ckpt_path, device)
        if saved["identity"] != identity:
            raise ConfigError(f"{ckpt_path} is from a different configuration; delete "
                              f"{partial} to start over")
        unet.load_state_dict(saved["unet"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        shuffle.set_state(saved["shuffle"])
        noise_gen.set_state(saved["noise"])
        state = saved["state"]

    bar = tqdm(range(state["epoch"], opts["epochs"]), desc=f"ddpm-cond {info.name}",
               unit="epoch", disable=not ctx.progress, dynamic_ncols=True,
               initial=state["epoch"], total=opts["epochs"])
    for epoch in bar:
        start = time.perf_counter()
        unet.train()
        order = torch.randperm(len(x_train), generator=shuffle).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x_train), opts["batch"]):
            idx = order[i : i + opts["batch"]]
            x0, y = x_train[idx], y_train[idx]
            t = torch.randint(0, len(abar), (len(x0),), generator=noise_gen, device=device)
            eps = torch.randn(x0.shape, generator=noise_gen, device=device)
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, eps)
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
        partial.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"identity": identity, "unet": unet.state_dict(), "ema": ema.state_dict(),
                    "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "shuffle": shuffle.get_state(), "noise": noise_gen.get_state(),
                    "state": state}, tmp)
        tmp.replace(ckpt_path)

    ema = ema.to("cpu")
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    ema.save_pretrained(tmp_out / "unet", safe_serialization=True)
    scheduler.save_config(tmp_out / "scheduler")
    card = {
        "name": name, "method": "ndc", "arch": "diffusers-unet2d-class-conditional",
        "dataset": info.name, "conditional": True, "num_classes": k, "label_dropout": 0.0,
        "objective": "epsilon MSE, t ~ U{0..T-1}, class_labels = y",
        "schedule": SCHEDULE, "unet": identity["unet"],
        "parameters": sum(p.numel() for p in ema.parameters()), "ema_decay": EMA_DECAY,
        "epochs": opts["epochs"], "batch": opts["batch"], "lr": opts["lr"],
        "optimizer": "AdamW, one-cycle schedule", "seed": ctx.seed,
        "train_images": len(x_train), "final_loss": round(state["losses"][-1], 5),
        "loss_every_10_epochs": [round(v, 4) for v in state["losses"][::10]],
        "train_seconds": round(state["seconds"], 1), "device": str(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": ctx.command,
    }
    card.update(label_check(ema, ctx.test, abar.cpu(), k, seed=ctx.seed))
    (tmp_out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.replace(out)
    shutil.rmtree(partial, ignore_errors=True)
    card["sha256"] = sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    return {**card, "weights": str(out)}


def label_check(unet, test: tuple[torch.Tensor, torch.Tensor], abar: torch.Tensor,
                num_classes: int, *, seed: int = 0) -> dict[str, Any]:
    """Test-set eps MSE with the true label and with the label shifted by one (same x_t), at
    :data:`CHECK_TIMESTEPS`: the gap is the evidence a diffusion classifier works with."""
    x, y = test
    if len(x) == 0:
        return {}
    x0 = x.cpu() * 2 - 1
    y = y.cpu().long()
    gen = torch.Generator().manual_seed(seed + 2)
    true_mse, wrong_mse = [], []
    with torch.inference_mode():
        for t in CHECK_TIMESTEPS:
            a = float(abar[t])
            eps = torch.randn(x0.shape, generator=gen)
            xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
            steps = torch.full((len(x0),), t, dtype=torch.long)
            for labels, acc in ((y, true_mse), ((y + 1) % num_classes, wrong_mse)):
                pred = unet(xt, steps, class_labels=labels).sample
                acc.append(round(float(((pred - eps) ** 2).mean()), 5))
    return {"label_check": {"timesteps": list(CHECK_TIMESTEPS), "eps_mse_true_label": true_mse,
                            "eps_mse_wrong_label": wrong_mse,
                            "what": "test-set eps MSE, true label vs (label + 1) mod K"}}
