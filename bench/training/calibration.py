"""Diffusion fine-tuning of Multi-scale Diffusion Denoised Smoothing (Jeong & Shin, NeurIPS 2023,
arXiv 2310.16779, its Sec. 3 "diffusion calibration"; algorithms.md Sec. 7.4).

The denoiser ``D_theta`` (a DDPM used for one-shot denoising, Sec. 5 of algorithms.md) is
fine-tuned with the classifier ``F`` (softmax of a registered, clean-trained network) FROZEN, at
every noise scale ``sigma`` of the cascade, so that for a training pair (x, y):

(a) where x is *recoverable* at sigma -- the frozen classifier labels the denoised draw
    ``D_theta(x + delta_i)`` correctly -- the denoising is made *consistent*: the Brier score of
    ``F(D_theta(x + delta_i))`` against the one-hot label is minimised;
(b) where it is not -- the draw is misclassified -- the outputs are made *diverse* across noise
    draws: an anti-consistency term penalises the agreement of the classifier's outputs over the
    misclassified draws of the same image, pushing the top-class vote share under the cascade's
    threshold ``p0`` so that scale abstains (or defers to a smaller sigma) instead of
    certifying a wrong label;

plus the original epsilon-prediction loss of the DDPM as a regulariser, so the model stays a
denoiser at every timestep. With ``M`` noise draws ``delta_1..delta_M ~ N(0, sigma^2 I)`` per
image (pixel units of [0, 1] images), ``p_i = F(D_theta(x + delta_i))`` and
``c_i = 1[argmax p_i = y]`` (no gradient through the indicator)::

    L_Brier(x, y; sigma) = 1/M  sum_i  c_i * || p_i - e_y ||^2
    L_AC(x, y; sigma)    = 1/M^2 || sum_i (1 - c_i) p_i ||^2
                         = 1/M^2  sum_{i, j misclassified} <p_i, p_j>
    L = L_eps + lambda * 1/K sum_{sigma in scales} mean_batch( L_Brier + alpha * L_AC )

where ``L_eps = || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2`` with
``t ~ U{0..T-1}`` on the same batch (x0 = 2x - 1), exactly the base model's training objective
(:mod:`bench.training.ddpm`).

Provenance of each choice. The split into (a) consistent denoising where the image is
recoverable and (b) diverse outputs otherwise, the frozen classifier, the Brier form of (a), the
name and purpose of the anti-consistency term of (b) and keeping the diffusion loss come from the
paper's abstract and Sec. 3 as summarised in algorithms.md Sec. 7.4. The paper's full Sec. 3
text was NOT retrievable here (only its abstract/first page is in the stored copies), so the
following are this project's choices, not verified against the paper:

* recoverability is decided per noise draw (``c_i`` above), not per image;
* the anti-consistency term is the squared norm of the (1/M-scaled) sum of the misclassified
  draws' softmax vectors, i.e. their mean pairwise inner product including self terms: bounded
  in [0, 1], zero when no draw is wrong, largest when all M draws agree on one wrong class, and
  its minimiser spreads the wrong draws over classes (lower top-class share);
* both terms are averaged over all B x M draws (an expectation of indicator x loss), the scales
  are weighted equally, and the scales fine-tuned are the cascade's (0.25, 0.5, 1.0);
* the weights lambda = 1, alpha = 1, M = 4 draws, AdamW at lr 1e-4 with a cosine schedule, batch
  64 and 8 epochs (sized for digits on one CPU core), no EMA (a short fine-tuning of EMA weights).

The differentiable denoiser :func:`denoise` is the same map as
:meth:`bench.diffusion.Denoiser.forward` (same timestep t*, scaling and clipping; see the test),
written without in-place ops so gradients reach the UNet. The fine-tuning is seeded, resumes
from a per-epoch checkpoint in ``<out>/<name>.partial/`` (removed once the folder is written)
and reruns bit for bit; the result is a diffusers folder (``unet/`` + ``scheduler/``) with a
``card.json`` holding a before/after evaluation on the test split.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.contract import TrainContext
from bench.diffusion import Denoiser, DiffusionModel, inner_unet
from bench.errors import ConfigError, ModelError
from bench.nets import sha256_file
from bench.progress import progress
from bench.training.ddpm import SCHEDULE
from bench.training.loop import Resumable, training_generators

SCALES = (0.25, 0.5, 1.0)
TRAIN_DEFAULTS = {"epochs": 8, "batch": 64, "lr": 1e-4}
LOSS_DEFAULTS = {"draws": 4, "lam": 1.0, "alpha": 1.0}
EVAL_DRAWS = 16  # noise draws per test image in the card's before/after evaluation
P0 = 0.5  # the cascade's threshold on the top-class share (algorithms.md Sec. 7.1, --skip_p)
OBJECTIVE = ("L_eps + lam * mean_sigma mean_batch(L_Brier + alpha * L_AC); "
             "L_Brier = 1/M sum_i c_i ||p_i - e_y||^2, "
             "L_AC = 1/M^2 ||sum_i (1 - c_i) p_i||^2, c_i = 1[argmax p_i = y], "
             "p_i = softmax(clf(D(x + delta_i))), delta_i ~ N(0, sigma^2 I); "
             "L_eps = epsilon MSE, t ~ U{0..T-1}")


# ----------------------------------------------------------------------------------------------
# Losses


def brier_loss(probs: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Brier score on the correctly classified draws: ``mean_{b,i} c_bi ||p_bi - e_{y_b}||^2``.

    ``probs`` (B, M, K) class probabilities of M denoised noise draws per image, ``y`` (B,)
    labels, ``correct`` (B, M) bool (is draw i of image b labelled y_b). Averaged over all B x M
    draws, so misclassified draws count as zero rather than being dropped from the mean.
    """
    onehot = F.one_hot(y, probs.shape[-1]).to(probs.dtype).unsqueeze(1)
    per_draw = (probs - onehot).square().sum(-1)
    return (per_draw * correct.to(probs.dtype)).sum() / correct.numel()


def diversity_loss(probs: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Anti-consistency over the misclassified draws: ``mean_b 1/M^2 ||sum_{i wrong} p_bi||^2``.

    Equals the mean pairwise agreement ``<p_i, p_j>`` over pairs of misclassified draws (self
    pairs included) scaled by 1/M^2: in [0, 1], 0 without wrong draws, 1 when all M draws put
    probability 1 on the same class. ``probs`` (B, M, K), ``wrong`` (B, M) bool.
    """
    m = probs.shape[1]
    summed = (probs * wrong.to(probs.dtype).unsqueeze(-1)).sum(1)
    return (summed.square().sum(-1) / m**2).mean()


def calibration_losses(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_Brier, L_AC) of (B, M, K) probabilities, splitting draws by the frozen classifier's
    argmax (no gradient through the split)."""
    correct = (probs.detach().argmax(-1) == y.unsqueeze(1))
    return brier_loss(probs, y, correct), diversity_loss(probs, ~correct)


# ----------------------------------------------------------------------------------------------
# Differentiable one-shot denoising


def denoise(den: Denoiser, x: torch.Tensor) -> torch.Tensor:
    """:meth:`Denoiser.forward` without in-place ops: x + delta in [0, 1] -> x_hat in [0, 1],
    differentiable in the denoiser's network (zero gradient where the clip is active)."""
    z = x * 2 - 1
    eps = den.model(z * den.sqrt_abar, den.t)
    c = z.shape[1]
    if eps.shape[1] == 2 * c:
        eps = eps[:, :c]
    elif eps.shape[1] != c:
        raise ModelError(f"the denoiser returned {eps.shape[1]} channels for {c}-channel images")
    x0 = torch.add(z, eps.to(z.dtype), alpha=-den.s_t).clamp(-1, 1)
    return x0.add(1).mul(0.5)


# ----------------------------------------------------------------------------------------------
# Fine-tuning


def finetune_denoiser(ctx: TrainContext, *, base: str, classifier: str,
                      scales: Sequence[float] = SCALES, draws: int | None = None,
                      lam: float | None = None, alpha: float | None = None) -> dict[str, Any]:
    """Fine-tune the registered DDPM ``base`` against the frozen registered ``classifier`` at
    every sigma in ``scales``; write ``<out_dir>/<name>`` (diffusers folder + card.json).

    ``ctx.options`` may set epochs, batch, lr, draws (M), lam, alpha and eval_draws (keyword
    arguments win over options, options over the defaults). Returns the card with ``sha256``
    (of ``unet/diffusion_pytorch_model.safetensors``) and ``weights`` (the folder).
    """
    from diffusers import UNet2DModel  # lazy: diffusers takes seconds to import

    if ctx.registered_model is None:
        raise ConfigError("fine-tuning a denoiser needs the registry (a registered base DDPM "
                          "and classifier); none is configured")
    info = ctx.dataset
    opts = {k: ctx.options.get(k) or v for k, v in TRAIN_DEFAULTS.items()}
    given = {"draws": draws, "lam": lam, "alpha": alpha}
    loss_opts = {k: given[k] if given[k] is not None else
                 (ctx.options.get(k) if ctx.options.get(k) is not None else v)
                 for k, v in LOSS_DEFAULTS.items()}
    m, lam_, alpha_ = int(loss_opts["draws"]), float(loss_opts["lam"]), float(loss_opts["alpha"])
    eval_draws = int(ctx.options.get("eval_draws") or EVAL_DRAWS)
    scales = tuple(float(s) for s in scales)
    if m < 1 or not scales or min(scales) <= 0 or lam_ < 0 or alpha_ < 0:
        raise ConfigError(f"bad fine-tuning settings: draws={m}, scales={scales}, "
                          f"lam={lam_:g}, alpha={alpha_:g}")
    name = ctx.name or f"{info.name}-ddpm-multiscale"
    out = Path(ctx.out_dir) / name
    partial = Path(ctx.out_dir) / f"{name}.partial"
    device = ctx.device

    base_model = ctx.registered_model(base)
    if not isinstance(base_model, DiffusionModel) or not isinstance(inner_unet(base_model.net),
                                                                    UNet2DModel):
        raise ConfigError(f"model {base!r} is not a diffusers UNet2DModel denoiser")
    base_sha = getattr(base_model, "checkpoint_sha256", None)
    scheduler = _scheduler_of(base_model)
    clf = ctx.registered_model(classifier).to(device).eval().requires_grad_(False)

    torch.manual_seed(ctx.seed)
    model = copy.deepcopy(base_model).to(device)
    model.net.requires_grad_(True)
    dens = [Denoiser(model, sigma=s) for s in scales]
    abar = model.alphas_cumprod.to(device=device, dtype=torch.float32)
    x_train = ctx.train[0].to(device)
    y_train = ctx.train[1].to(device)
    steps_per_epoch = -(-len(x_train) // opts["batch"])
    opt = torch.optim.AdamW(model.net.parameters(), lr=opts["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts["epochs"] * steps_per_epoch)
    gens = training_generators(ctx.seed, device)
    identity = {"seed": ctx.seed, **opts, **loss_opts, "scales": list(scales), "base": base,
                "base_sha256": base_sha, "classifier": classifier, "eval_draws": eval_draws,
                "train_images": len(x_train)}
    state: dict[str, Any] = {"epoch": 0, "seconds": 0.0, "history": [], "resumed_from": None}
    resumable = Resumable(partial / "checkpoint.pt", identity,
                          {"unet": model.net, "opt": opt, "sched": sched}, gens, device,
                          mismatch=f"{{path}} is from a different configuration; delete "
                                   f"{partial} to start over")
    saved = resumable.resume()
    if saved is not None:
        state = saved["state"]
        state["resumed_from"] = state["epoch"]
    if "before" not in state:
        state["before"] = measure_denoising(model, clf, ctx.test, scales, draws=eval_draws,
                                            seed=ctx.seed)

    bar = progress(range(state["epoch"], opts["epochs"]), desc=f"multiscale {info.name}",
                   unit="epoch", disable=not ctx.progress, dynamic_ncols=True,
                   initial=state["epoch"], total=opts["epochs"])
    for epoch in bar:
        start = time.perf_counter()
        model.net.train()
        order = torch.randperm(len(x_train), generator=gens["shuffle"]).to(device)
        totals = torch.zeros(4, device=device)  # eps, brier, ac, total; summed over images
        for i in range(0, len(x_train), opts["batch"]):
            idx = order[i : i + opts["batch"]]
            x, y = x_train[idx], y_train[idx]
            parts = _step_losses(model, clf, dens, abar, x, y, m, gens["noise"])
            l_eps, l_brier, l_ac = parts
            loss = l_eps + lam_ * (l_brier + alpha_ * l_ac)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals += torch.stack([l_eps, l_brier, l_ac, loss]).detach() * len(x)
        means = (totals / len(x_train)).tolist()
        state["history"].append(dict(zip(("eps_mse", "brier", "anti_consistency", "loss"),
                                         (round(v, 6) for v in means), strict=True)))
        state["epoch"] = epoch + 1
        state["seconds"] += time.perf_counter() - start
        bar.set_postfix(loss=f"{means[3]:.4f}", brier=f"{means[1]:.3f}", ac=f"{means[2]:.3f}")
        resumable.save(state=state)

    model.net.eval().requires_grad_(False)
    after = measure_denoising(model, clf, ctx.test, scales, draws=eval_draws, seed=ctx.seed)
    x_test, y_test = ctx.test
    with torch.inference_mode():
        clean = (clf(x_test.to(device)).argmax(1).cpu() == y_test).float().mean().item()
    if ctx.sigma in scales:
        noisy = after["scales"][f"{ctx.sigma:g}"]["accuracy"]
    else:
        noisy = measure_denoising(model, clf, ctx.test, (ctx.sigma,), draws=1,
                                  seed=ctx.seed)["scales"][f"{ctx.sigma:g}"]["accuracy"]

    unet = _fresh_copy(inner_unet(model.net.to("cpu")))
    factor = getattr(model.net, "factor", 1)  # a space-to-depth base stays one
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    unet.save_pretrained(tmp_out / "unet", safe_serialization=True)
    scheduler.save_config(tmp_out / "scheduler")
    hist = state["history"]
    card = {
        "name": name, "method": "multiscale", "arch": "diffusers-unet2d", "dataset": info.name,
        **({"space_to_depth": factor} if factor > 1 else {}),
        "sigma": ctx.sigma,  # only the noise level of the card's noisy_accuracy
        "objective": OBJECTIVE,
        "paper": "Jeong & Shin, Multi-scale Diffusion Denoised Smoothing, NeurIPS 2023 "
                 "(arXiv 2310.16779), Sec. 3; loss details are this project's choices "
                 "(bench/training/calibration.py docstring)",
        "scales": list(scales), "draws": m, "lambda": lam_, "alpha": alpha_, "p0": P0,
        "base": base, "base_sha256": base_sha, "classifier": classifier,
        "classifier_sha256": getattr(clf, "checkpoint_sha256", None),
        "t_star": {f"{d.sigma:g}": d.t for d in dens},
        "parameters": sum(p.numel() for p in unet.parameters()), "ema_decay": None,
        "epochs": opts["epochs"], "batch": opts["batch"], "lr": opts["lr"],
        "optimizer": "AdamW (no weight decay), cosine schedule per step", "seed": ctx.seed,
        "train_images": len(x_train), "final_loss": hist[-1]["loss"] if hist else None,
        "history": hist, "train_seconds": round(state["seconds"], 1),
        "resumed_from_epoch": state["resumed_from"], "device": str(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": ctx.command,
        "clean_accuracy": round(clean, 4), "noisy_accuracy": noisy,
        "eval": (f"{classifier} on clean / one-shot-denoised (sigma {ctx.sigma:g}) test images; "
                 f"before/after: per scale, {eval_draws} draws per test image: accuracy over "
                 "all draws, the majority vote's accuracy, its mean vote share over correctly "
                 "vs wrongly voted images, the share of images voted wrong with share >= p0, "
                 "and the epsilon MSE on the test images"),
        "before": state["before"], "after": after,
    }
    (tmp_out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.replace(out)
    shutil.rmtree(partial, ignore_errors=True)
    card["sha256"] = sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    return {**card, "weights": str(out)}


def _step_losses(model: DiffusionModel, clf, dens: Sequence[Denoiser], abar: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, m: int, gen: torch.Generator):
    """(L_eps, L_Brier, L_AC) of one batch; the Brier/AC terms averaged over the scales."""
    device = x.device
    x0 = x * 2 - 1
    t = torch.randint(0, len(abar), (len(x0),), generator=gen, device=device)
    eps = torch.randn(x0.shape, generator=gen, device=device)
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    l_eps = F.mse_loss(model.net(xt, t).sample, eps)
    brier = torch.zeros((), device=device)
    ac = torch.zeros((), device=device)
    for den in dens:
        delta = torch.randn((m, *x.shape), generator=gen, device=device) * den.sigma
        noisy = (x.unsqueeze(0) + delta).flatten(0, 1)  # draw-major: (M * B, C, H, W)
        probs = clf(denoise(den, noisy)).softmax(-1).view(m, len(x), -1).transpose(0, 1)
        lb, la = calibration_losses(probs, y)
        brier = brier + lb / len(dens)
        ac = ac + la / len(dens)
    return l_eps, brier, ac


@torch.no_grad()
def measure_denoising(model: DiffusionModel, clf, test: tuple[torch.Tensor, torch.Tensor],
                      scales: Sequence[float], *, draws: int, seed: int,
                      batch: int = 2048) -> dict:
    """What the fine-tuning should move, per scale, on the test split: with ``draws`` seeded
    noise draws per image (the same draws for every model evaluated with the same seed), the
    frozen classifier's accuracy on the one-shot-denoised draws, the majority vote's accuracy,
    the mean top-class vote share over images voted correctly and over images voted wrong, and
    the fraction of images voted wrong with a share >= p0 (what the cascade could certify
    wrongly). Also the epsilon MSE of the diffusion objective on the test images."""
    was_training = model.training
    model.eval()
    device = model.alphas_cumprod.device
    x, y = test[0].to(device), test[1].to(device)
    gen = torch.Generator(device=device).manual_seed(seed + 1000)
    out: dict[str, Any] = {"scales": {}}
    k = None
    for sigma in scales:
        den = Denoiser(model, sigma=sigma)
        labels = torch.empty((len(x), draws), dtype=torch.long, device=device)
        for d in range(draws):
            noise = torch.randn(x.shape, generator=gen, device=device) * sigma
            for i in range(0, len(x), batch):
                logits = clf(den(x[i : i + batch] + noise[i : i + batch]))
                k = logits.shape[-1]
                labels[i : i + batch, d] = logits.argmax(-1)
        counts = F.one_hot(labels, k).sum(1)  # (N, K)
        top_count, vote = counts.max(1)
        share = top_count.float() / draws
        right = vote == y
        wrong = ~right
        out["scales"][f"{sigma:g}"] = {
            "t_star": den.t,
            "accuracy": round((labels == y.unsqueeze(1)).float().mean().item(), 4),
            "vote_accuracy": round(right.float().mean().item(), 4),
            "share_correct": _mean_or_nan(share[right]),
            "share_wrong": _mean_or_nan(share[wrong]),
            "wrong_confident": round((wrong & (share >= P0)).float().mean().item(), 4),
            "images_wrong": int(wrong.sum()),
        }
    abar = model.alphas_cumprod.to(dtype=torch.float32)
    x0 = x * 2 - 1
    t = torch.randint(0, len(abar), (len(x0),), generator=gen, device=device)
    eps = torch.randn(x0.shape, generator=gen, device=device)
    a = abar[t].view(-1, 1, 1, 1)
    pred = model.net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample
    out["eps_mse"] = round(F.mse_loss(pred, eps).item(), 5)
    out["images"] = len(x)
    out["draws"] = draws
    model.train(was_training)
    return out


def _fresh_copy(unet):
    """The UNet rebuilt from its config without the base folder's ``_name_or_path`` (a local
    path that would otherwise land in the saved config.json); same weights."""
    from diffusers import UNet2DModel  # lazy: diffusers takes seconds to import

    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    fresh = UNet2DModel.from_config(config)
    fresh.load_state_dict(unet.state_dict())
    return fresh.eval().requires_grad_(False)


def _mean_or_nan(v: torch.Tensor) -> float:
    return round(v.mean().item(), 4) if v.numel() else math.nan


def _scheduler_of(model: DiffusionModel):
    """The base model's DDPMScheduler (from its diffusers folder; else the project's DDPM
    schedule), checked against the alphas_cumprod the model was loaded with."""
    from diffusers import DDPMScheduler  # lazy: diffusers takes seconds to import

    sched = None
    desc = getattr(model, "description", "")
    if desc.startswith("diffusers "):
        folder = Path(desc.removeprefix("diffusers "))
        where = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
        if (where / "scheduler_config.json").is_file():
            sched = DDPMScheduler.from_pretrained(where)
    if sched is None:
        sched = DDPMScheduler(**SCHEDULE)
    ours = sched.alphas_cumprod.double()
    theirs = model.alphas_cumprod.double().cpu()
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9):
        raise ConfigError("cannot recover the base model's noise schedule to save with the "
                          "fine-tuned UNet")
    return sched
