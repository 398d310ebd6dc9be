"""The leaderboard's accuracy-vs-compute section: inline SVG panels (log compute axis) and the
table of the compute each method needs to reach a certified accuracy at a radius
(:mod:`bench.reports.compute` computes them; this module draws; no torch, every text escaped)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from bench.certify.records import RunSummary
from bench.reports import compute
from bench.reports.style import DASHES, PALETTE

FRONT_COLOR = "#000"


@dataclass(frozen=True)
class LogAxes:
    """Compute ``10**lo .. 10**hi`` (log) and a metric ``0..ymax`` to viewBox coordinates."""

    lo: int
    hi: int
    ymax: float
    width: int = 320
    height: int = 230
    left: int = 46
    right: int = 10
    top: int = 10
    bottom: int = 38

    def x(self, cost: float) -> float:
        frac = (math.log10(cost) - self.lo) / (self.hi - self.lo)
        return self.left + (self.width - self.left - self.right) * frac

    def y(self, v: float) -> float:
        return self.top + (self.height - self.top - self.bottom) * (1 - v / self.ymax)


def decades(costs: Sequence[float]) -> tuple[int, int]:
    """Whole decades around the costs (at least one decade wide)."""
    lo = math.floor(math.log10(min(costs)))
    hi = math.ceil(math.log10(max(costs)))
    return lo, max(hi, lo + 1)


def svg_panel(view: compute.View, metric: Any, colors: Mapping[str, str],
              dashes: Mapping[str, str]) -> Markup:
    """One metric against compute: a polyline with dots per curve, the Pareto front as a black
    dotted step with rings. Scales with the page (viewBox)."""
    lo, hi = decades([p.cost for p in view.points])
    acr = metric == compute.ACR
    scale = 1.0 if acr else 100.0
    ymax = 100.0 if not acr else _nice_top(max(p.metrics[metric] for p in view.points))
    ax = LogAxes(lo, hi, ymax)
    w, h = ax.width, ax.height
    x0, x1, y0, y1 = ax.left, w - ax.right, ax.y(ymax), ax.y(0.0)
    name = escape(compute.metric_text(metric))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="compute-plot" '
             f'viewBox="0 0 {w} {h}" width="100%" preserveAspectRatio="xMinYMin meet" '
             f'role="img" aria-label="{name} versus {escape(view.unit)}">']
    for k in range(5 + 1):
        v = ymax * k / 5
        yy = ax.y(v)
        parts.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x1}" y2="{yy:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{x0 - 5}" y="{yy + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{v:g}</text>')
    for d in range(lo, hi + 1):
        xx = ax.x(10.0 ** d)
        parts.append(f'<line x1="{xx:.1f}" y1="{y1}" x2="{xx:.1f}" y2="{y1 + 4}" stroke="#333"/>'
                     f'<text x="{xx:.1f}" y="{y1 + 16}" font-size="11" '
                     f'text-anchor="middle">1e{d}</text>')
        for k in range(2, 10):  # minor ticks of a log axis
            if d < hi:
                mx = ax.x(k * 10.0 ** d)
                parts.append(f'<line x1="{mx:.1f}" y1="{y1}" x2="{mx:.1f}" y2="{y1 + 2}" '
                             'stroke="#999"/>')
    parts.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#333"/>'
                 f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{h - 4}" font-size="11" '
                 f'text-anchor="middle">{escape(view.unit)} (log)</text>')
    mid = (y0 + y1) / 2
    label = "ACR" if acr else f"cert. acc. (%) at r={float(metric):g}"
    parts.append(f'<text x="11" y="{mid:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 11 {mid:.1f})">{escape(label)}</text>')
    for c in view.curves:
        color = colors.get(c.method, PALETTE[0])
        pts = " ".join(f"{ax.x(p.cost):.2f},{ax.y(scale * p.metrics[metric]):.2f}"
                       for p in c.points)
        dash = dashes.get(c.label, "")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        title = escape(c.label)
        parts.append(f'<g class="compute-curve"><title>{title}</title><polyline fill="none" '
                     f'stroke="{color}" stroke-width="2"{dash_attr} points="{pts}"/>')
        for p in c.points:
            cy = ax.y(scale * p.metrics[metric])
            parts.append(f'<circle cx="{ax.x(p.cost):.2f}" cy="{cy:.2f}" '
                         f'r="2.8" fill="{color}"><title>{title}, N={p.n:,}: '
                         f'{_value_text(p.metrics[metric], acr)} at '
                         f'{escape(compute.format_cost(p.cost, view.unit))}</title></circle>')
        parts.append("</g>")
    front = view.fronts[metric]
    steps: list[tuple[float, float]] = []
    for i, p in enumerate(front):
        pt = (ax.x(p.cost), ax.y(scale * p.metrics[metric]))
        if i:
            steps.append((pt[0], steps[-1][1]))
        steps.append(pt)
    if steps:
        path = "M" + " L".join(f"{x:.2f},{y:.2f}" for x, y in steps)
        parts.append(f'<g class="pareto"><title>Pareto front: no run is cheaper and better'
                     f'</title><path fill="none" stroke="{FRONT_COLOR}" stroke-width="1.2" '
                     f'stroke-dasharray="1.5 2.5" d="{path}"/>')
        for p in front:
            parts.append(f'<circle class="front-point" cx="{ax.x(p.cost):.2f}" '
                         f'cy="{ax.y(scale * p.metrics[metric]):.2f}" r="5.5" fill="none" '
                         f'stroke="{FRONT_COLOR}" stroke-width="1.2"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through escape()


def _nice_top(value: float) -> float:
    for step in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0):
        if value <= 5 * step:
            return max(step, math.ceil(value / step - 1e-9) * step)
    return math.ceil(value)


def _value_text(value: float, acr: bool) -> str:
    return f"ACR {value:.3f}" if acr else f"{100 * value:.1f}%"


def curve_dashes(view: compute.View) -> dict[str, str]:
    """A dash pattern per curve label: one per sigma, in sorted order (as the radius plots)."""
    def key(sigma: Any) -> tuple[int, float, str]:
        return (0, float(sigma), "") if isinstance(sigma, (int, float)) else (1, 0.0, str(sigma))

    sigmas = sorted({key(c.sigma) for c in view.curves})
    return {c.label: DASHES[sigmas.index(key(c.sigma)) % len(DASHES)] for c in view.curves}


def compute_sections(summaries: Sequence[RunSummary], grid: Sequence[float],
                     colors: Mapping[str, str]) -> list[dict[str, Any]]:
    """The view model of the page's accuracy-vs-compute sections: one per comparable set of
    runs (one image set, one alpha) with a configuration certified at two budgets or more."""
    radii = compute.key_radii(grid)
    out = []
    for k, view in enumerate(compute.views_of(summaries, radii)):
        dashes = curve_dashes(view)
        reach = compute.reach_rows(view, compute.reach_table(view.points,
                                                             compute.default_targets(view)))
        out.append({
            "anchor": f"compute-{k + 1}", "unit": view.unit, "images": view.images,
            "alpha": view.alpha,
            "panels": [svg_panel(view, m, colors, dashes) for m in view.metrics],
            "legend": [{"label": c.label, "color": colors.get(c.method, PALETTE[0]),
                        "dash": dashes[c.label], "budgets": len(c.points)}
                       for c in view.curves],
            "reach": reach,
            "targets": list(dict.fromkeys(r["target"] for r in reach)),
            "methods": sorted({r["method"] for r in reach}),
        })
    return out


def reach_markdown(section: Mapping[str, Any]) -> list[str]:
    """The reach table of a section as Markdown lines (targets as rows, methods as columns)."""
    from bench.reports.escape import markdown as md

    methods = section["methods"]
    cells = {(r["target"], r["method"]): r for r in section["reach"]}
    lines = ["| target | " + " | ".join(md(m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for t in section["targets"]:
        row = [md(t)]
        for m in methods:
            r = cells.get((t, m))
            row.append("" if r is None else md(f"{r['cost']} ({r['how']})"))
        lines.append("| " + " | ".join(row) + " |")
    return lines
