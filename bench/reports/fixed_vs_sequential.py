"""Fixed N against sequential certification, side by side, on the runs a store holds.

A sequential run and a fixed-N run are paired when everything but the procedure and its
sample sizes is the same (method, dataset, sigma, alpha, seed, N0, params, models, data).
For each pair, on the images both certified: certified accuracy at every grid radius under
each certification, the difference in points, and the mean noisy samples per image (N0 + the
estimation samples actually drawn), whose ratio is the saving. Both give every cell
the same per-image 1 - alpha guarantee; they differ in power and cost only (efficiency.md 1.6).

A label-aware sequential run (``--label-aware``) has no fixed-N counterpart of its own: it is
paired with the same fixed-N run, and every line about it says that its early exits use the
test labels (a saving no deployed classifier has); the overall savings keep the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

from bench.certify import metrics
from bench.certify.records import Certificate, RunCard
from bench.errors import ConfigError
from bench.reports.rows import LABEL_AWARE, certification_of
from bench.store.database import Store

PAIR_KEYS = ("method", "adapter", "dataset", "sigma", "alpha", "seed", "n0", "m", "params",
             "models", "data_fingerprint", "subset", "subset_hash", "noise")


@dataclass
class Pair:
    fixed: RunCard
    sequential: RunCard
    grid: list[float]
    images: int
    accuracy_fixed: dict[float, float]
    accuracy_sequential: dict[float, float]
    samples_fixed: float  # mean N0 + N per image
    samples_sequential: float

    @property
    def ratio(self) -> float:
        return self.samples_fixed / self.samples_sequential

    @property
    def label_aware(self) -> bool:
        return certification_of(self.sequential.identity) == LABEL_AWARE

    @property
    def largest_difference(self) -> float:
        """Largest |fixed - sequential| over the grid, in points (percent)."""
        return max(abs(self.accuracy_fixed[r] - self.accuracy_sequential[r]) * 100
                   for r in self.grid)


def pair_key(card: RunCard) -> str:
    return json.dumps({k: card.identity.get(k) for k in PAIR_KEYS}, sort_keys=True)


def pairs(store: Store, dataset: str, methods: Sequence[str] | None = None) -> list[Pair]:
    """Every (fixed, sequential) pair of runs of ``dataset`` (optionally of ``methods``)."""
    fixed: dict[str, list] = {}
    sequential: dict[str, list] = {}
    for run in store.runs_of(dataset):
        ident = run.card.identity
        if not run.images or run.card.kind != "reproduced":
            continue
        if methods and ident["method"] not in methods:
            continue
        procedure = ident.get("procedure", "cohen")
        if procedure == "sequential":
            sequential.setdefault(pair_key(run.card), []).append(run)
        elif procedure == "cohen":
            fixed.setdefault(pair_key(run.card), []).append(run)
    out = []
    for key, seq_runs in sequential.items():
        for seq in seq_runs:
            for fix in fixed.get(key, []):
                out.append(_pair(store, fix, seq))
    return sorted(out, key=lambda p: (p.fixed.identity["method"], p.fixed.identity["sigma"]))


def _pair(store: Store, fix, seq) -> Pair:
    a = {c.idx: c for c in store.certs(fix.run_id)}
    b = {c.idx: c for c in store.certs(seq.run_id)}
    common = sorted(set(a) & set(b))
    grid = [float(r) for r in seq.card.identity.get("sequential", {}).get("grid")
            or seq.card.radius_grid]
    return Pair(
        fixed=fix.card, sequential=seq.card, grid=grid, images=len(common),
        accuracy_fixed=_accuracy([a[i] for i in common], grid),
        accuracy_sequential=_accuracy([b[i] for i in common], grid),
        samples_fixed=_mean_samples([a[i] for i in common]),
        samples_sequential=_mean_samples([b[i] for i in common]))


def _accuracy(certs: Sequence[Certificate], grid: Sequence[float]) -> dict[float, float]:
    return metrics.certified_accuracy([c.radius for c in certs], [c.correct for c in certs],
                                      grid)


def _mean_samples(certs: Sequence[Certificate]) -> float:
    return sum(c.samples for c in certs) / max(1, len(certs))


def looks_text(checkpoints: Sequence[int]) -> str:
    """The looks, the first four and the last where there are more than eight."""
    shown = list(checkpoints) if len(checkpoints) <= 8 else [*checkpoints[:4], None,
                                                              checkpoints[-1]]
    return ", ".join("..." if n is None else f"{n:,}" for n in shown)


def render(found: Sequence[Pair]) -> str:
    """One block per pair: both certifications' rows, the difference row, samples and ratio."""
    if not found:
        raise ConfigError("no pair of a fixed-N and a sequential run with the same method, "
                          "sigma, alpha, seed and images; certify both (--certification fixed and "
                          "--certification sequential) into one store")
    blocks = []
    for p in found:
        ident = p.fixed.identity
        rule = p.sequential.identity["sequential"]
        looks = looks_text(rule["checkpoints"])
        kind = LABEL_AWARE if p.label_aware else "sequential"
        named = f"{rule['rule']}: " if rule.get("rule", "gs-cp") != "gs-cp" else ""
        head = (f"{ident['method']} on {ident['dataset']}, sigma {ident['sigma']:g}, alpha "
                f"{ident['alpha']:g}, {p.images} images: fixed N = {ident['n']:,} vs {kind} "
                f"({named}looks at {looks})")
        radii = [f"{r:g}" for r in p.grid]
        rows = [["fixed N", f"{p.samples_fixed:,.0f}",
                 *(100 * p.accuracy_fixed[r] for r in p.grid)],
                [kind, f"{p.samples_sequential:,.0f}",
                 *(100 * p.accuracy_sequential[r] for r in p.grid)],
                ["difference (points)", _saving(p.ratio),
                 *(100 * (p.accuracy_sequential[r] - p.accuracy_fixed[r]) for r in p.grid)]]
        table = tabulate(rows, headers=["certification", "samples/image", *radii], floatfmt=".1f")
        blocks.append(f"{head}\n{table}\nlargest cell difference {p.largest_difference:.1f} "
                      f"points; {_saving(p.ratio)} samples per image" + _label_note(p))
    blocks.append(_overall(found))
    return "\n\n".join(blocks)


def _saving(ratio: float) -> str:
    """Fixed-N samples over sequential ones, as the sequential run's saving or its extra cost."""
    return f"{ratio:.2f}x fewer" if ratio >= 1 else f"{1 / ratio:.2f}x more"


def _label_note(p: Pair) -> str:
    if not p.label_aware:
        return ""
    return (" (label-aware: it stopped after selection on images whose selected class was "
            "wrong, using their test labels; a deployed classifier cannot)")


def _overall(found: Sequence[Pair]) -> str:
    """The saving over all pairs, plain and label-aware sequential runs apart."""
    parts = []
    for label_aware in (False, True):
        group = [p for p in found if p.label_aware == label_aware]
        if not group:
            continue
        fixed = sum(p.samples_fixed * p.images for p in group)
        sequential = sum(p.samples_sequential * p.images for p in group)
        parts.append(("label-aware (using the test labels): " if label_aware else "")
                     + f"{_saving(fixed / sequential)} samples per image")
    return (f"overall: {'; '.join(parts)}; largest cell difference "
            f"{max(p.largest_difference for p in found):.1f} points")
