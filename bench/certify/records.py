"""The records of a run, each computed in exactly one place (no torch).

* :class:`Certificate`: what certifying one image produced (counts, bound, radius, cost).
* :class:`RunCard`: the run card; the run id is the hash of its identity, here only.
* :class:`RunSummary`: metrics over a run's certificates (certified accuracy with intervals
  over the image sample, ACR, abstain rate, cost), built by :meth:`RunSummary.from_certs`;
  it also keeps each image's (radius, correct) by index for paired tests (not serialized).
* :func:`certificate_flops`: the forward FLOPs one certificate spent, derived from its noisy
  samples and the card's ``compute`` block (FLOPs per prediction, measured once per run by
  :mod:`bench.running.flops`), so certs.tsv keeps its columns and committed files their bytes.

Runner, table, leaderboard, importer and compare all read these; nothing else recomputes a
metric or a run id (index lists are hashed by :func:`bench.data.specs.subset_hash` only).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.certify import metrics
from bench.certify.budget import flops_per_sample
from bench.data.specs import grid_for, subset_hash

IDENTITY_VERSION = 1  # the run identity's version, under its first key "protocol"
CI_LEVEL = 0.95  # the over-images interval shown next to certified accuracy
ABSTAIN = -1


def canonical_json(obj: Any) -> str:
    """The one serialization that is hashed: sorted keys, JSON types only."""
    return json.dumps(obj, sort_keys=True)


def run_id_of(identity: Mapping[str, Any]) -> str:
    """A run's id: 12 hex digits of the sha256 of its canonical identity."""
    return hashlib.sha256(canonical_json(dict(identity)).encode()).hexdigest()[:12]


@dataclass
class Certificate:
    """The full record of certifying one image (the store keeps one row per certificate).

    ``label`` is None when the caller does not know the true class (the Python API);
    ``count``, ``p_lower`` and the passes are -1 for imported rows, which carry no counts.
    """

    prediction: int  # certified class, or -1 (abstain)
    radius: float  # full precision; 0.0 when abstaining
    p_lower: float  # Clopper-Pearson lower bound on p_A
    top_class: int  # class chosen by the selection samples
    count: int  # estimation samples voting for top_class (n_A)
    n0: int
    n: int
    counts_select: list[int] = field(default_factory=list)
    counts_estimate: list[int] = field(default_factory=list)
    classifier_passes: int = 0
    diffusion_passes: int = 0
    seconds: float = 0.0
    idx: int = -1
    label: int | None = None
    device: str = ""
    # A multi-stage procedure (the cascade) says how it ended and what each stage it visited
    # counted and bounded; empty for Cohen's single stage.
    outcome: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""  # the image's file, relative to a class-folder tree; "" for other datasets

    @property
    def stage(self) -> int:
        """The stage that accepted (0 = the first visited), -1 when none did or no stages."""
        return next((s["stage"] for s in self.stages if s.get("decision") == "accept"), -1)

    @property
    def samples(self) -> int:
        """Noisy samples this image drew: N0 + N at each stage a cascade visited, else
        N0 + N (a sequential certificate's N is the estimation samples drawn before it
        stopped)."""
        staged = [s for s in self.stages if "level" not in s]
        if staged:
            return sum(int(s["n0"]) + int(s["n"]) for s in staged)
        return self.n0 + self.n

    @property
    def level(self) -> int:
        """The grid level a sequential certificate reached (its stages' ``level``), -1 when
        none or when the stages have no levels (Cohen's, the cascade's)."""
        return max((int(s["level"]) for s in self.stages if "level" in s), default=-1)

    @property
    def correct(self) -> int:
        """1 if the certified class is the true one (an abstention is never correct)."""
        return int(self.label is not None and self.prediction != ABSTAIN
                   and self.prediction == self.label)

    def to_row(self) -> dict[str, Any]:
        """The store's columns (Cohen's names: ``predict``, ``time``)."""
        return {
            "idx": self.idx, "label": -1 if self.label is None else self.label,
            "predict": self.prediction, "radius": self.radius, "correct": self.correct,
            "time": self.seconds, "top_class": self.top_class, "count": self.count,
            "n0": self.n0, "n": self.n, "p_lower": self.p_lower,
            "classifier_passes": self.classifier_passes,
            "diffusion_passes": self.diffusion_passes, "device": self.device,
            "counts_select": list(self.counts_select),
            "counts_estimate": list(self.counts_estimate),
            "stage": self.stage, "outcome": self.outcome, "stages": list(self.stages),
            "path": self.path,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Certificate:
        detail = row.get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail) if detail else {}
        return cls(
            prediction=int(row["predict"]), radius=float(row["radius"]),
            p_lower=float(row["p_lower"]), top_class=int(row["top_class"]),
            count=int(row["count"]), n0=int(row["n0"]), n=int(row["n"]),
            counts_select=list(row["counts_select"]),
            counts_estimate=list(row["counts_estimate"]),
            classifier_passes=int(row["classifier_passes"]),
            diffusion_passes=int(row["diffusion_passes"]), seconds=float(row["time"]),
            idx=int(row["idx"]), label=int(row["label"]), device=str(row["device"]),
            outcome=str(row.get("outcome") or detail.get("outcome", "")),
            stages=list(row.get("stages") or detail.get("stages", [])),
            path=str(row.get("path") or detail.get("path", "")),
        )


@dataclass
class RunCard:
    """The card of a run: ``identity`` (what must match to resume or compare; its
    hash is the run id) plus descriptive fields (budget, cost, grid, paper, environment,
    procedure, model roles, a claimed run's source)."""

    identity: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.extra.get("run_id") or run_id_of(self.identity)

    @property
    def kind(self) -> str:
        """reproduced (certified by this harness) or claimed (an imported TSV)."""
        return self.identity.get("kind", "reproduced")

    @property
    def radius_grid(self) -> list[float]:
        return [float(r) for r in self.extra.get("radius_grid")
                or grid_for(self.identity["dataset"])]

    @property
    def folder_name(self) -> str:
        """``[claimed-]<method>-<dataset>-sigma<S>-<run id>``: where a run's exports live."""
        ident = self.identity
        prefix = "claimed-" if self.kind == "claimed" else ""
        # An imported method name is free text: keep it from escaping the runs/ folder.
        method = re.sub(r"[^A-Za-z0-9._+-]+", "_", ident["method"]).strip(".") or "_"
        return f"{prefix}{method}-{ident['dataset']}-sigma{ident['sigma']:g}-{self.run_id}"

    def to_json(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.extra.items() if k != "run_id"}
        return {"run_id": self.run_id, "identity": self.identity, **extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunCard:
        """A stored card; its recorded run id is kept (stores written before keep theirs)."""
        extra = {k: v for k, v in data.items() if k != "identity"}
        return cls(identity=dict(data["identity"]), extra=extra)


@dataclass
class RunSummary:
    """Metrics of one run over the certificates it has (possibly part of its subset)."""

    card: RunCard
    images: int
    accuracy: dict[float, float]  # radius -> certified accuracy in [0, 1]
    interval: dict[float, tuple[float, float]]  # exact two-sided CI over the image sample
    acr: float
    abstain: float
    classifier_passes: float | None  # means per image, over rows that recorded them
    diffusion_passes: float | None
    seconds: float | None
    devices: list[str]
    sample_key: str  # hash of the certified indices: which images the numbers are about
    # idx -> (radius, correct) per certified image, for paired tests between runs on the same
    # images (bench.reports.table); not part of summary.json.
    per_image: dict[int, tuple[float, int]] = field(default_factory=dict, repr=False,
                                                    compare=False)
    # A multi-stage procedure's tally: where images were accepted, why they abstained, how
    # many stages and samples they took (None for single-stage runs).
    stages: dict[str, Any] | None = None
    # Mean noisy samples drawn per image (Certificate.samples), None without certificates.
    mean_samples: float | None = None
    # Mean forward FLOPs per image (certificate_flops), None without a card's compute block.
    mean_flops: float | None = None

    @classmethod
    def from_certs(cls, card: RunCard, certs: Sequence[Certificate]) -> RunSummary:
        grid = card.radius_grid
        radii = [c.radius for c in certs]
        correct = [c.correct for c in certs]
        count = len(certs)
        return cls(
            card=card, images=count,
            accuracy=metrics.certified_accuracy(radii, correct, grid),
            interval={r: metrics.sample_interval(metrics.certified_count(radii, correct, r),
                                                 count, CI_LEVEL) for r in grid},
            acr=metrics.average_certified_radius(radii, correct),
            abstain=metrics.abstain_rate([c.prediction for c in certs]),
            classifier_passes=_mean(c.classifier_passes for c in certs
                                    if c.classifier_passes >= 0),
            diffusion_passes=_mean(c.diffusion_passes for c in certs if c.diffusion_passes >= 0),
            seconds=_mean(c.seconds for c in certs if c.seconds >= 0),
            devices=sorted({c.device for c in certs if c.device}),
            sample_key=subset_hash(sorted(c.idx for c in certs)),
            per_image={c.idx: (c.radius, c.correct) for c in certs},
            stages=stage_tally(certs),
            mean_samples=_mean(c.samples for c in certs),
            mean_flops=_mean(f for f in (certificate_flops(c, card.extra.get("compute"))
                                         for c in certs) if f is not None),
        )

    @property
    def subset_size(self) -> int | None:
        return self.card.identity.get("subset_size")

    @property
    def samples(self) -> float:
        """Noisy samples actually drawn per image, the mean over its certificates (a cascade
        draws N0 + N at every stage it visits, a sequential run stops early); the worst case
        when there are none (:attr:`max_samples`)."""
        return self.mean_samples if self.mean_samples is not None else self.max_samples

    @property
    def max_samples(self) -> int:
        """Noisy samples per image at worst: N0 + N at each of the procedure's stages (a
        cascade's K; a sequential run's N is its last checkpoint)."""
        ident = self.card.identity
        stages = int((self.card.extra.get("budget") or {}).get("stages") or 1)
        return stages * (int(ident["n0"]) + int(ident["n"]))

    @property
    def flops_per_image(self) -> float | None:
        """Forward FLOPs actually spent per image, the mean over its certificates (samples
        drawn x FLOPs per prediction); the worst case when there are none; None when the card
        has no ``compute`` block (a claimed run, a store written before FLOPs were measured)."""
        return self.mean_flops if self.mean_flops is not None else self.max_flops_per_image

    @property
    def max_flops_per_image(self) -> int | float | None:
        """Forward FLOPs per image at worst: (N0 + N) x FLOPs per noisy sample at every stage
        of the procedure (:func:`bench.certify.budget.flops_per_sample`)."""
        compute = self.card.extra.get("compute")
        if not compute:
            return None
        ident = self.card.identity
        stages = int((self.card.extra.get("budget") or {}).get("stages") or 1)
        return (int(ident["n0"]) + int(ident["n"])) * flops_per_sample(compute, stages)

    @property
    def max_certifiable_radius(self) -> float:
        """The largest radius any image can reach at this sigma, N and alpha."""
        return card_max_certifiable_radius(self.card)

    @property
    def samples_per_second(self) -> float:
        if not self.seconds:
            return float("nan")
        return self.samples / self.seconds

    def to_json(self) -> dict[str, Any]:
        """``summary.json``: the card plus metrics and cost per image."""
        return {
            **self.card.to_json(),
            "images": {"certified": self.images, "subset_size": self.subset_size,
                       "complete": self.images == self.subset_size},
            "metrics": {
                "certified_accuracy": {f"{r:g}": v for r, v in self.accuracy.items()},
                "certified_accuracy_ci95_over_images":
                    {f"{r:g}": list(v) for r, v in self.interval.items()},
                "acr": self.acr, "abstain_rate": self.abstain,
                "max_certifiable_radius": self.max_certifiable_radius,
            },
            "cost_per_image": {
                "samples": self.samples, "max_samples": self.max_samples,
                "classifier_passes": self.classifier_passes,
                "diffusion_passes": self.diffusion_passes,
                "flops_per_image": self.flops_per_image,
                "max_flops_per_image": self.max_flops_per_image, "seconds": self.seconds,
                "samples_per_second": self.samples_per_second, "devices": self.devices,
            },
            **({"stages": self.stages} if self.stages else {}),
        }


def certificate_flops(cert: Certificate, compute: Mapping[str, Any] | None) -> float | None:
    """Forward FLOPs certifying ``cert`` spent: its noisy samples (:attr:`Certificate.samples`)
    x FLOPs per prediction of the card's ``compute`` block; a cascade whose stages differ
    counts each visited stage's N0 + N at that stage's figure. None without a block."""
    if not compute:
        return None
    per_stage = {float(s["sigma"]): s["flops_per_prediction"] for s in compute.get("stages") or []}
    visited = [s for s in cert.stages if "level" not in s]
    if per_stage and visited:
        return sum((int(s["n0"]) + int(s["n"])) * per_stage[float(s["sigma"])] for s in visited)
    return cert.samples * compute["flops_per_prediction"]


def stage_tally(certs: Sequence[Certificate]) -> dict[str, Any] | None:
    """Per stage of a multi-stage procedure: images accepted there (by the stage's sigma),
    abstentions by reason, and the mean number of stages and noisy samples per image."""
    if any("level" in s for c in certs for s in c.stages):
        return sequential_tally(certs)
    staged = [c for c in certs if c.stages]
    if not staged:
        return None
    accepted: dict[str, int] = {}
    abstained: dict[str, int] = {}
    for c in staged:
        if c.stage >= 0:
            key = f"{c.stages[c.stage]['sigma']:g}"
            accepted[key] = accepted.get(key, 0) + 1
        else:
            reason = c.outcome.split(" at ")[0] if c.outcome else "abstain"
            abstained[reason] = abstained.get(reason, 0) + 1
    return {
        "accepted_at_sigma": dict(sorted(accepted.items(), key=lambda kv: -float(kv[0]))),
        "abstained": dict(sorted(abstained.items())),
        "mean_stages_visited": sum(len(c.stages) for c in staged) / len(staged),
        "mean_samples": sum(c.samples for c in staged) / len(staged),
    }


def sequential_tally(certs: Sequence[Certificate]) -> dict[str, Any]:
    """A sequential run: images per certified grid level, why they stopped, and the mean
    number of looks and of noisy samples (N0 + estimation samples actually drawn) per image."""
    levels: dict[str, int] = {}
    stops: dict[str, int] = {}
    for c in certs:
        key = str(c.level) if c.level >= 0 else "none"
        levels[key] = levels.get(key, 0) + 1
        reason = c.stages[-1]["decision"] if c.stages else (c.outcome or "no estimation")
        stops[reason] = stops.get(reason, 0) + 1
    return {
        "certified_at_level": dict(sorted(levels.items(), key=lambda kv: (kv[0] == "none",
                                                                          kv[0].zfill(4)))),
        "stopped": dict(sorted(stops.items())),
        "mean_looks": sum(len(c.stages) for c in certs) / max(1, len(certs)),
        "mean_samples": sum(c.samples for c in certs) / max(1, len(certs)),
    }


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def max_certifiable_radius(procedure: Mapping[str, Any] | None, sigma: float, n: int,
                           alpha: float) -> float:
    """The one maximum certifiable radius: the bound a procedure declares in its card block
    (``procedure``: the cascade's, the sequential grid's top), else Cohen's
    sigma * PhiInv(alpha^(1/N)) (:func:`bench.certify.stats.max_radius`)."""
    declared = (procedure or {}).get("max_certifiable_radius")
    if declared is not None:  # a procedure whose bound is not Cohen's
        return float(declared)
    from bench.certify import stats  # lazy: stats imports scipy, which takes seconds

    return stats.max_radius(sigma, n, alpha)


def card_max_certifiable_radius(card: RunCard) -> float:
    """A run card's maximum certifiable radius (:func:`max_certifiable_radius` of its procedure
    block and its identity's sigma, N and alpha)."""
    ident = card.identity
    return max_certifiable_radius(card.extra.get("procedure"), ident["sigma"], ident["n"],
                                  ident["alpha"])
