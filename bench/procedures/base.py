"""The procedure interface and the protocol values every procedure is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.budget import Budget
from bench.protocol import Cost
from bench.records import Certificate

DEFAULT_SIGMA = 0.25  # --sigma when not given, for a single-scale procedure


def single_scale_sigma(name: str, accepted: tuple[str, ...], method,
                       requested: float | None) -> float:
    """--sigma, or the default, for a single-scale procedure ``name``; a method certified by
    a procedure outside ``accepted`` (the cascade) is refused."""
    from bench.errors import ConfigError

    own = getattr(method, "PROCEDURE", name)  # a method that names none takes this one
    if own not in accepted:
        raise ConfigError(f"method {method.id!r} is certified with the {own} procedure, not "
                          f"{name}; drop --procedure")
    return DEFAULT_SIGMA if requested is None else requested


@dataclass(frozen=True)
class ProcedureSpec:
    """What the run's protocol fixes for a procedure: sample sizes as requested (N or a
    budget B of N x m predictions, resolved by the procedure once its base classifiers declare
    m), alpha, sigma, seed and the batch size (which never changes a certificate); the last
    four fields only matter to :class:`bench.procedures.sequential.Sequential`."""

    name: str
    dataset: str
    method: str
    n0: int
    n: int | None
    budget: int | None
    alpha: float
    sigma: float
    seed: int
    batch: int
    # The sequential procedure's (defaults keep every other procedure's spec unchanged):
    radii: tuple[float, ...] = ()  # the run's radius grid; () = the dataset's
    label_aware: bool = False  # stop after selection when it picks a class other than the label
    checkpoints: tuple[int, ...] = ()  # cumulative estimation sizes; () = scaled from N
    checkpoint_alphas: tuple[float, ...] = ()  # alpha spent at each checkpoint; () = default


class Procedure(Protocol):
    """Certifies one image; deterministic given (run seed, image index)."""

    name: str
    budget: Budget  # N0, N and m as resolved for this run
    cost: Cost  # forward passes per noisy sample
    sigma: float  # the run's sigma (the cascade's largest scale): tables group runs by it

    def describe(self) -> dict[str, Any]:
        """What the base classifier reports about itself (a denoiser's t*, ...)."""
        ...

    def card(self) -> dict[str, Any]:
        """How the procedure spends alpha and samples, for the run's card."""
        ...

    def certify(self, x: torch.Tensor, idx: int, label: int | None) -> Certificate:
        ...
