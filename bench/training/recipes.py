"""Which optimizer settings a noise-trained classifier gets: the project's recipe or a paper's.

``python -m bench train --recipe`` picks ``project`` (cosine, lr 0.05, batch 64, 60 epochs: fast
and good on the small datasets), ``reference`` (the method's published recipe) or ``auto``
(reference where the papers report: CIFAR-10). The published recipes sit here side by side
with their sources, so an adapter names its paper's recipe and consistency regularization
reuses SmoothAdv's without one adapter importing another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.contract import TrainContext
from bench.errors import ConfigError
from bench.training.loop import TrainSettings

# Cohen et al.'s recipe (algorithms.md 1.5), the default reference: SGD lr 0.1, StepLR x0.1
# every 30 epochs, 90 epochs, batch 256, crop+flip on CIFAR.
REFERENCE_RECIPE: Mapping[str, Any] = {"epochs": 90, "batch": 256, "lr": 0.1,
                                       "weight_decay": 1e-4, "milestones": (30, 60)}
# MACER's main.py: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 64, 440 epochs, x0.1 at 200, 400.
MACER_RECIPE: Mapping[str, Any] = {"epochs": 440, "batch": 64, "lr": 0.01, "weight_decay": 5e-4,
                                   "milestones": (200, 400)}
RECIPES = ("auto", "project", "reference")


def reference_augment(ctx: TrainContext) -> str:
    """The augmentation the dataset's reference recipes use (its spec says, through the
    context ``train`` builds; none if unknown)."""
    return ctx.reference_augment


def smoothadv_recipe(m: int) -> dict[str, Any]:
    """Salman et al.'s README recipe: SGD lr 0.1, StepLR 50, 150 epochs, 256 images per loaded
    batch split into m optimizer steps (``--batch`` counts examples per step: 256 // m).
    Consistency regularization's code uses the same."""
    return {"epochs": 150, "batch": max(1, 256 // m), "lr": 0.1, "weight_decay": 1e-4,
            "milestones": (50, 100)}


def recipe_name(ctx: TrainContext) -> str:
    """--recipe resolved: ``auto`` means reference on CIFAR-10, project elsewhere."""
    recipe = ctx.options.get("recipe") or "auto"
    if recipe not in RECIPES:
        raise ConfigError(f"unknown --recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    if recipe == "auto":
        return "reference" if reference_augment(ctx) != "none" else "project"
    return recipe


def train_settings(ctx: TrainContext, recipe: str,
                   reference: Mapping[str, Any] = REFERENCE_RECIPE) -> TrainSettings:
    """Project recipe (cosine, lr 0.05, batch 64, 60 epochs) or the method's reference recipe;
    --epochs/--batch/--lr override either."""
    base: dict[str, Any] = {}
    if recipe == "reference":
        base = {**reference, "schedule": "multistep",
                "augment": reference_augment(ctx)}
    base.update({k: ctx.options[k] for k in ("epochs", "batch", "lr")
                 if ctx.options.get(k) is not None})
    return TrainSettings(**base, seed=ctx.seed)


def describe(s: TrainSettings) -> str:
    """The optimizer line of a model card."""
    wd = f"{s.weight_decay:.0e}".replace("e-0", "e-")
    if s.schedule == "cosine":
        return f"SGD momentum {s.momentum:g}, wd {wd}, cosine schedule"
    steps = ", ".join(str(m) for m in s.milestones)
    return f"SGD momentum {s.momentum:g}, wd {wd}, lr x{s.gamma:g} at epochs {steps}"
