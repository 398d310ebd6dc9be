"""The generic training loop: seeded, resumable, and the same for every noise-trained classifier.

Methods supply only the per-batch loss (Gaussian augmentation, SmoothAdv, MACER, ...); the loop
owns shuffling, augmentation, the optimizer and schedule, the progress bar, determinism (every
random draw comes from generators seeded by the run seed) and crash recovery: with a checkpoint
path it saves model, optimizer, schedule and every RNG state after each epoch, and a rerun with
the same settings resumes there and ends with the same weights, bit for bit, as an
uninterrupted run. Keeping it in one place is what lets the zoo models retrain bit for bit
whichever method trained them. Its resumable skeleton (:func:`training_generators`,
:class:`Resumable`: identity check, resume, atomic save) is also the DDPM trainers' and the
denoiser calibration's.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from bench.errors import ConfigError
from bench.progress import progress as progress_bar

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
SCHEDULES = ("cosine", "multistep")
AUGMENTS = ("none", "crop-flip")


@dataclass
class TrainSettings:
    epochs: int = 60
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    # "cosine": annealed per optimizer step over all epochs (the project recipe);
    # "multistep": lr x gamma at each epoch in ``milestones`` (the references' StepLR/MultiStepLR).
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: str = "none"  # "crop-flip": random crop with 4-pixel zero padding + horizontal flip

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; use one of {AUGMENTS}")
        self.milestones = tuple(int(m) for m in self.milestones)


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                     settings: TrainSettings, *, device: torch.device, progress: bool = True,
                     desc: str = "train", epoch_hook: Callable[[int], None] | None = None,
                     checkpoint: Path | None = None,
                     fingerprint: Mapping[str, Any] | None = None) -> dict:
    """SGD with momentum over ``epochs``; returns a small history.

    ``epoch_hook(e)`` runs before epoch ``e`` (0-based), for epoch-dependent losses (epsilon
    warm-up, deferred regularizers). ``checkpoint``: file to save/resume from; ``fingerprint``
    (settings, method, params, ...) must match for a resume, so a changed command never
    silently continues an unrelated run.
    """
    torch.manual_seed(settings.seed)  # weight init of layers created lazily inside loss_fn
    net.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(x) // settings.batch)
    if settings.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(settings.milestones),
                                                     gamma=settings.gamma)
    gens = training_generators(settings.seed, device, augment=True)
    fingerprint = _canonical({"settings": asdict(settings), "samples": len(x),
                              **(fingerprint or {})})
    resumable = Resumable(
        Path(checkpoint) if checkpoint is not None else None, fingerprint,
        {"net": net, "opt": opt, "sched": sched}, gens, device, key="fingerprint",
        mismatch="{path} was written by a different training configuration; rerun the "
                 "original command to resume it, or delete the file to start over")
    state = {"epoch": 0, "seconds": 0.0, "final_loss": float("nan")}
    saved = resumable.resume()
    if saved is not None:
        state = {k: saved[k] for k in state}
    start = time.perf_counter() - state["seconds"]
    bar = progress_bar(range(state["epoch"], settings.epochs), desc=desc, unit="epoch",
                       disable=not progress, dynamic_ncols=True, initial=state["epoch"],
                       total=settings.epochs)
    last_loss = state["final_loss"]
    for epoch in bar:
        if epoch_hook is not None:
            epoch_hook(epoch)
        order = torch.randperm(len(x), generator=gens["shuffle"]).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x), settings.batch):
            idx = order[i : i + settings.batch]
            xb = x[idx]
            if settings.augment == "crop-flip":
                xb = crop_flip(xb, gens["augment"])
            loss = loss_fn(net, xb, y[idx], gens["noise"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if settings.schedule == "cosine":
                sched.step()
            total += loss.detach() * len(idx)
        if settings.schedule != "cosine":
            sched.step()
        last_loss = float(total) / len(x)  # one host sync per epoch
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if checkpoint is not None:
            resumable.save(epoch=epoch + 1, final_loss=last_loss,
                           seconds=time.perf_counter() - start)
    net.eval()
    return {"final_loss": last_loss, "seconds": time.perf_counter() - start,
            "resumed_from_epoch": state["epoch"]}


# ----- the resumable-training skeleton (this loop, the DDPM trainers, the calibration) ---------
def training_generators(seed: int, device: torch.device, *,
                        augment: bool = False) -> dict[str, torch.Generator]:
    """A training run's seeded generators: ``shuffle`` (CPU, ``seed``), ``noise`` (on
    ``device``, ``seed + 1``) and, with ``augment``, ``augment`` (CPU, ``seed + 2``)."""
    gens = {"shuffle": torch.Generator().manual_seed(seed),
            "noise": torch.Generator(device=device).manual_seed(seed + 1)}
    if augment:
        gens["augment"] = torch.Generator().manual_seed(seed + 2)
    return gens


class Resumable:
    """The one resumable-training skeleton: a checkpoint file that holds the run's ``identity``
    (under ``key``), the state of every ``stateful`` object (``state_dict``/``load_state_dict``:
    weights, EMA, optimizer, schedule), every generator and the global RNGs, plus the trainer's
    own progress; :meth:`resume` checks the identity (``mismatch``: the one-line error, with
    ``{path}``) and restores it all, :meth:`save` writes it atomically after each epoch. With
    ``path`` None nothing is saved or resumed."""

    def __init__(self, path: Path | None, identity: Any, stateful: Mapping[str, Any],
                 gens: Mapping[str, torch.Generator], device: torch.device, *,
                 key: str = "identity", mismatch: str):
        self.path, self.identity, self.key, self.mismatch = path, identity, key, mismatch
        self.stateful, self.gens, self.device = dict(stateful), dict(gens), device

    def resume(self) -> dict[str, Any] | None:
        """The saved checkpoint with everything restored; None where there is none."""
        if self.path is None or not self.path.is_file():
            return None
        saved = load_training_checkpoint(self.path)  # on the CPU: RNG states must be there
        if saved.get(self.key) != self.identity:
            raise ConfigError(self.mismatch.format(path=self.path))
        for name, obj in self.stateful.items():
            obj.load_state_dict(saved[name])
        gen_states = saved.get("gens") or {k: saved[k] for k in self.gens}  # or a first layout
        for name, gen in self.gens.items():
            gen.set_state(gen_states[name])
        if saved.get("torch_rng") is not None:
            torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        return saved

    def save(self, **progress: Any) -> None:
        """Checkpoint now (atomically): identity, states, generators, RNGs and ``progress``."""
        if self.path is None:
            return
        save_checkpoint(self.path, {
            self.key: self.identity, **progress,
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
            "gens": {k: g.get_state() for k, g in self.gens.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        })


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash mid-write leaves the previous epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def load_training_checkpoint(path: Path, device="cpu") -> Any:
    """A resume checkpoint, weights-only; a truncated, damaged or pickled-object file is a
    one-line error (delete it to start over), never a traceback or executed code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise ConfigError(f"training checkpoint {path} is not weights-only (it pickles "
                              f"objects); delete {path} to start over") from exc
        raise ConfigError(f"training checkpoint {path} cannot be read: it is truncated or "
                          f"damaged; delete {path} to start over") from exc
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"training checkpoint {path} cannot be read ({first}): it is "
                          f"truncated or damaged; delete {path} to start over") from exc


def _canonical(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image (offset 0..2*pad per axis) + random h-flip,
    one draw per image (torchvision's RandomCrop(padding=4) + RandomHorizontalFlip)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).tolist()
    flips = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs)])
    flip_idx = [i for i, f in enumerate(flips) if f]
    if flip_idx:
        out[flip_idx] = out[flip_idx].flip(-1)
    return out


@torch.no_grad()
def noisy_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, *,
                   draws: int = 1, seed: int = 0, batch: int = 1000,
                   device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``net`` on x + N(0, sigma^2 I), averaged over ``draws`` seeded draws."""
    net.eval().to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    hits = torch.zeros((), dtype=torch.long, device=device)
    for _ in range(draws):
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].to(device)
            if sigma > 0:
                xb = xb + sigma * torch.randn(xb.shape, generator=gen, device=device)
            hits += (net(xb).argmax(1) == y[i : i + batch].to(device)).sum()
    return float(hits) / (draws * len(x))
