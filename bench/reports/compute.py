"""Accuracy against compute: each run as a point (FLOPs per image, certified accuracy at chosen
radii and ACR), runs of one configuration at several budgets as a curve, the Pareto front over
all points, and the FLOPs each method needs to reach a certified accuracy at a radius (no torch,
no matplotlib).

The compute of a run is its FLOPs per image: the summary's ``flops_per_image`` where the run
records it, else the card's ``compute.flops_per_prediction`` times the noisy samples drawn per
image. Where some run of a view has neither, the whole view falls back to predictions per image
(noisy samples x m), so one axis never mixes the two units. Only runs with per-image data
certified with a fixed N are drawn (a sequential run stops early: another comparison), and a
view holds runs on one image set at one alpha (:func:`comparable_sets`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.certify import metrics
from bench.certify.records import RunSummary
from bench.errors import ConfigError
from bench.reports.table import certification_of, run_sigma

FLOPS = "FLOPs per image"
PREDICTIONS = "predictions per image (noisy samples x m)"
ACR = "ACR"  # the metric key of the average certified radius


@dataclass
class Point:
    """One run: its compute per image (``cost``: FLOPs, else predictions) and metrics."""

    run_id: str
    method: str
    sigma: float | str
    params: dict[str, Any]
    n: int
    m: int
    flops: float | None  # FLOPs per image, None when the run does not say
    predictions: float  # noisy samples x m per image
    metrics: dict[Any, float]  # radius -> certified accuracy (fraction); ACR -> ACR
    images: int
    sample_key: str
    alpha: float
    seed: int = 0
    cost: float = 0.0  # the view's x: flops or predictions (set by :func:`build_view`)


@dataclass
class Curve:
    """The points of one configuration (method, sigma, params, seed) ordered by compute."""

    method: str
    sigma: float | str
    label: str
    points: list[Point] = field(default_factory=list)


@dataclass
class View:
    """Everything drawn and tabulated for one set of comparable runs."""

    unit: str  # FLOPS or PREDICTIONS
    radii: list[float]
    curves: list[Curve]
    fronts: dict[Any, list[Point]]  # metric -> Pareto-optimal points, by compute
    images: int
    alpha: float

    @property
    def metrics(self) -> list[Any]:
        return [*self.radii, ACR]

    @property
    def points(self) -> list[Point]:
        return [p for c in self.curves for p in c.points]


def flops_per_image(summary: RunSummary) -> float | None:
    """FLOPs per image of a run: the summary's own figure, else the card's FLOPs per noisy
    prediction times the samples drawn per image; None when the run records neither."""
    own = getattr(summary, "flops_per_image", None)
    if _positive(own):
        return float(own)
    compute = summary.card.extra.get("compute") or {}
    per = compute.get("flops_per_prediction")
    if _positive(per) and summary.samples:
        return float(per) * float(summary.samples)
    return None


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def eligible(summary: RunSummary) -> bool:
    """A run the view can draw: certificates with per-image data, fixed-N certification."""
    ident = summary.card.identity
    return bool(summary.images and summary.per_image and ident.get("n")
                and not certification_of(ident))


def point_of(summary: RunSummary, radii: Sequence[float]) -> Point:
    """A run as a point: certified accuracy at ``radii`` from its per-image radii (exact at any
    radius, on the grid or not) and its ACR."""
    ident = summary.card.identity
    pairs = list(summary.per_image.values())
    acc = metrics.certified_accuracy([r for r, _ in pairs], [c for _, c in pairs], radii)
    m = int(ident.get("m") or 1)
    return Point(run_id=summary.card.run_id, method=str(ident["method"]),
                 sigma=run_sigma(summary.card), params=dict(ident.get("params") or {}),
                 n=int(ident["n"]), m=m, flops=flops_per_image(summary),
                 predictions=float(summary.samples) * m, metrics={**acc, ACR: summary.acr},
                 images=summary.images, sample_key=summary.sample_key,
                 alpha=float(ident.get("alpha") or 0), seed=int(ident.get("seed") or 0))


def comparable_sets(points: Iterable[Point]) -> list[list[Point]]:
    """Points grouped by image set and alpha (what one view may compare), largest first."""
    groups: dict[tuple[str, float], list[Point]] = {}
    for p in points:
        groups.setdefault((p.sample_key, p.alpha), []).append(p)
    return sorted(groups.values(), key=lambda g: (-len(g), -g[0].images, g[0].sample_key))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (compute at most as large and accuracy
    at least as large, one of them strictly), ordered by compute. Equal points are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    last: tuple[float, float] | None = None
    for i in order:
        x, y = points[i]
        if y > best or (last is not None and (x, y) == last):
            front.append(i)
            best = max(best, y)
            last = (x, y)
    return front


def _key(p: Point) -> tuple[Any, ...]:
    sigma = (0, float(p.sigma), "") if isinstance(p.sigma, (int, float)) else (1, 0.0, p.sigma)
    return (p.method, sigma, json.dumps(p.params, sort_keys=True), p.seed)


def build_view(points: Sequence[Point], radii: Sequence[float]) -> View:
    """The curves (one per method, sigma, params and seed; N varies along it) and the Pareto
    front per metric of comparable points (one image set, one alpha)."""
    if not points:
        raise ConfigError("no runs with per-image certificates at a fixed N to draw")
    if len({(p.sample_key, p.alpha) for p in points}) > 1:
        raise ConfigError("runs on different image sets or alphas cannot share one "
                          "accuracy-vs-compute view; filter them (comparable_sets)")
    unit = FLOPS if all(p.flops is not None for p in points) else PREDICTIONS
    for p in points:
        p.cost = float(p.flops) if unit == FLOPS else p.predictions
    groups: dict[tuple[Any, ...], list[Point]] = {}
    for p in sorted(points, key=lambda p: (_key(p), p.cost)):
        groups.setdefault(_key(p), []).append(p)
    curves = [Curve(method=g[0].method, sigma=g[0].sigma, label="", points=g)
              for g in groups.values()]
    _label(curves)
    fronts = {}
    for metric in [*radii, ACR]:
        xy = [(p.cost, p.metrics[metric]) for p in points]
        fronts[metric] = [points[i] for i in pareto_front(xy)]
    return View(unit=unit, radii=[float(r) for r in radii], curves=curves, fronts=fronts,
                images=points[0].images, alpha=points[0].alpha)


def _label(curves: list[Curve]) -> None:
    """``method sigma=S``, plus the params (and seed) that tell apart curves of one method and
    sigma (DiffSmooth at m = 5 and m = 10)."""
    for c in curves:
        sigma = f"{c.sigma:g}" if isinstance(c.sigma, (int, float)) else str(c.sigma)
        c.label = f"{c.method} sigma={sigma}"
    for c in curves:
        same = [o for o in curves if o.method == c.method and o.sigma == c.sigma]
        if len(same) < 2:
            continue
        first = c.points[0]
        keys = sorted({k for o in same for k in o.points[0].params})
        extra = [f"{k}={first.params.get(k)}" for k in keys
                 if len({json.dumps(o.points[0].params.get(k)) for o in same}) > 1]
        if len({o.points[0].seed for o in same}) > 1:
            extra.append(f"seed={first.seed}")
        c.label = " ".join([c.label, *extra])


def key_radii(grid: Sequence[float], count: int = 3) -> list[float]:
    """Radii for a headline: the smallest positive grid radius r, then 2r, 4r where on the
    grid (else the next grid radii)."""
    positive = [r for r in grid if r > 0]
    if not positive:
        return list(grid)[:count]
    first = positive[0]
    picks = [r for r in (first, 2 * first, 4 * first)
             if any(abs(r - g) < 1e-9 for g in positive)]
    for r in positive:
        if len(picks) >= count:
            break
        if r not in picks:
            picks.append(r)
    return sorted(picks[:count])


# ----- the compute needed to reach a target -----------------------------------------------------
@dataclass(frozen=True)
class Target:
    accuracy: float  # fraction in (0, 1]
    radius: float

    @property
    def text(self) -> str:
        return f"{100 * self.accuracy:g}% at r={self.radius:g}"


@dataclass
class Reach:
    """What one method needs for a target: its cheapest point reaching it (None when no point
    does), and its best accuracy at the radius with the compute of that point."""

    method: str
    target: Target
    point: Point | None
    best: Point | None


def parse_targets(text: str | None) -> list[Target]:
    """``A@R,...``: certified accuracy A (a percentage, or a fraction <= 1) at radius R."""
    if not text:
        return []
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        acc, sep, radius = item.partition("@")
        try:
            a, r = float(acc.rstrip("%")), float(radius)
        except ValueError:
            a, r = math.nan, math.nan
        if not sep or not math.isfinite(a) or not math.isfinite(r):
            raise ConfigError(f"--reach takes ACCURACY@RADIUS items such as 80@0.5, got {item!r}")
        a = a / 100 if a > 1 else a
        if not 0 < a <= 1 or r < 0:
            raise ConfigError(f"--reach {item}: accuracy must be in (0, 100]%, radius >= 0")
        out.append(Target(a, r))
    return out


def default_targets(view: View) -> list[Target]:
    """One target per radius of the view: the accuracy level (a multiple of 10%) at or below
    90% of the best any run reaches there, so the table tells methods apart by what they pay
    to get close to the best."""
    out = []
    for r in view.radii:
        best = max((p.metrics[r] for p in view.points), default=0.0)
        level = math.floor(0.9 * best * 10 + 1e-9) / 10
        if level > 0:
            out.append(Target(level, r))
    return out


def reach_table(points: Sequence[Point], targets: Sequence[Target]) -> list[Reach]:
    """For each target and method: the cheapest point (any sigma, N, params) whose certified
    accuracy at the target's radius is at least the target's, and the method's best point
    there. Accuracy is measured on the runs' grid of budgets only: the true minimum lies
    between the point found and the next cheaper point of that method."""
    out = []
    methods = sorted({p.method for p in points})
    for t in targets:
        for name in methods:
            mine = [p for p in points if p.method == name]
            acc = {p.run_id: exact_accuracy(p, t.radius) for p in mine}
            hits = [p for p in mine if acc[p.run_id] >= t.accuracy - 1e-12]
            cheapest = min(hits, key=lambda p: (p.cost, -acc[p.run_id]), default=None)
            best = max(mine, key=lambda p: (acc[p.run_id], -p.cost), default=None)
            out.append(Reach(name, t, cheapest, best))
    return out


def exact_accuracy(p: Point, radius: float) -> float:
    """The point's certified accuracy at ``radius`` (one of the view's radii)."""
    for key, value in p.metrics.items():
        if key != ACR and math.isclose(float(key), radius, abs_tol=1e-12):
            return value
    raise ConfigError(f"radius {radius:g} is not among the view's radii")


def format_cost(value: float, unit: str) -> str:
    """FLOPs to three significant digits (``1.35e+08``); predictions with separators."""
    return f"{value:.3g}" if unit == FLOPS else f"{value:,.0f}"


def reach_rows(view: View, reaches: Sequence[Reach]) -> list[dict[str, Any]]:
    """The reach table as rows (target, method, cost text, point): what both the CLI and the
    leaderboard print."""
    rows = []
    for r in reaches:
        if r.point is not None:
            p = r.point
            text = format_cost(p.cost, view.unit)
            how = f"sigma={_sigma_text(p.sigma)}, N={p.n:,}" + (f", m={p.m}" if p.m != 1 else "")
        else:
            text = "not reached"
            b = r.best
            how = (f"best {100 * exact_accuracy(b, r.target.radius):.0f}% "
                   f"(sigma={_sigma_text(b.sigma)}, N={b.n:,})") if b is not None else ""
        rows.append({"target": r.target.text, "method": r.method, "cost": text, "how": how,
                     "reached": r.point is not None})
    return rows


def _sigma_text(sigma: float | str) -> str:
    return f"{sigma:g}" if isinstance(sigma, (int, float)) else str(sigma)


def views_of(summaries: Iterable[RunSummary], radii: Sequence[float]) -> list[View]:
    """A view per comparable set of the eligible runs that has a curve of two budgets or more
    (a set of single runs says nothing about compute)."""
    points = [point_of(s, radii) for s in summaries if eligible(s)]
    out = []
    for group in comparable_sets(points):
        view = build_view(group, radii)
        if any(len(c.points) > 1 for c in view.curves):
            out.append(view)
    return out


def metric_text(metric: Any) -> str:
    return "ACR" if metric == ACR else f"certified accuracy (%) at r={float(metric):g}"

