"""The procedure interface and the run values every procedure is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.certify.budget import Budget
from bench.certify.records import Certificate
from bench.contract import Cost
from bench.data.specs import DatasetSpec
from bench.errors import ConfigError

DEFAULT_SIGMA = 0.25  # --sigma when not given, for a single-scale procedure
# The harness phase at which the runner's one-forward model probe restarts a base classifier's
# own noise (run seed 0, image 0): a stream of its own, whose draws are in no certificate.
PROBE_PHASE = 99


def single_scale_sigma(name: str, accepted: tuple[str, ...], method,
                       requested: float | None) -> float:
    """--sigma, or the default, for a single-scale procedure ``name``; a method certified by
    a procedure outside ``accepted`` (the cascade) is refused."""
    own = getattr(method, "PROCEDURE", name)  # a method that names none takes this one
    if own not in accepted:
        raise ConfigError(f"method {method.id!r} is certified with the {own} procedure, not "
                          f"{name}; drop --procedure")
    return DEFAULT_SIGMA if requested is None else requested


def noise_streams(phases: dict[int, str], base) -> list[dict[str, Any]]:
    """Every noise stream one image draws from, for the card: the harness's delta stream of
    each phase (``phases``: phase -> what it is for), then the base classifier's own streams
    for those phases where it has any (``base.noise_streams(phases)``: NDC's eps, DiffSmooth's
    local draws). The identity's ``noise.scheme`` text is fixed by identity version 1 (it is hashed
    into every run id) and names Cohen's two phases only; this list is the complete record."""
    streams = [{"phase": p, "seed": "SeedSequence([run seed, image index, phase])",
                "draws": f"harness noise delta: {use}"} for p, use in phases.items()]
    own = getattr(base, "noise_streams", None)
    if callable(own):
        streams += own(list(phases))
        streams += [{**s, "draws": s["draws"] + " (the runner's model probe, with run seed 0 "
                     "and image index 0, before certifying: in no certificate)"}
                    for s in own([PROBE_PHASE]) if s["phase"] is not None]
    return streams


@dataclass(frozen=True)
class ProcedureSpec:
    """What the run fixes for a procedure: sample sizes as requested (N or a
    budget B of N x m predictions, resolved by the procedure once its base classifiers declare
    m), alpha, sigma, seed and the batch size (which never changes a certificate); the last
    five fields only matter to :class:`bench.certify.procedures.sequential.Sequential`."""

    name: str
    dataset: DatasetSpec  # resolved once by the run: its default N and radius grid
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
    sequential_rule: str = "gs-cp"  # gs-cp (version 1) or fine-cp (fine looks, power futility)


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
