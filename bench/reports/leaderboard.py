"""Leaderboards: Markdown per dataset and a static, offline HTML site (jinja2, no torch).

The site is plain files: ``index.html``, one page per dataset, ``<dataset>.md`` and, under
``runs/<run>/``, a copy of each run's card and per-image TSV so every row's links work
when the folder is served or opened from disk. Nothing is loaded from a CDN: sorting is a few
lines of inline JavaScript and the plots are inline SVG written here.

Rows are ranked only against rows of the same comparison group (dataset, subset, alpha, budget); the
same-compute view gathers the groups by budget (requested predictions per image, else N x m). Rank
order is the area under the certified-accuracy curve on the grid (the sum over the grid radii),
which, unlike ACR, exists for reported rows too. Ranks are shared (:func:`shared_ranks`): rows
sorted by that score, a row takes the rank of the row above it unless the exact paired sign-flip
permutation test of the mean per-image score (the number of grid radii the image is certified at;
its mean is the rank score) finds it significantly below the top row of that rank
(:func:`bench.certify.metrics.sign_flip_test`: the test is about the statistic the rows are ordered
by, and a significant difference in the other direction never moves a row down). Rows without
per-image data on the same images (reported rows, envelopes) share a rank only on an equal score.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from bench.certify import metrics, records
from bench.errors import ConfigError
from bench.reports import table
from bench.reports.compute import key_radii
from bench.reports.compute_svg import compute_sections, reach_markdown
from bench.reports.curves import step_curve
from bench.reports.escape import markdown as md
from bench.reports.rows import Row
from bench.reports.style import DASHES, PALETTE, method_colors
from bench.store import database as store_mod
from bench.version import __version__

KIND_NOTES = {
    "reproduced": "certified by this harness (run card and per-image TSV linked)",
    "claimed": "per-image TSV submitted by the authors and imported; not re-certified here",
    "reported": "numbers printed in the paper (source given); no per-image data",
}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
HEADLINE_ROWS = 3  # top rows per comparison group on the index page
STEP_NOTE = ("Runs (reproduced, claimed): exact step curves from the per-image radii (certified "
             "accuracy at r counts the images certified correct with radius >= r), drawn up to "
             "the run's maximum certifiable radius (marked |: no image can be certified beyond "
             "it at this N and alpha). Reported rows and envelopes have values at grid radii "
             "only: each value is drawn as a step held until the next grid radius, which is "
             "not a measurement between grid points.")
# Pointers to files that are not part of the repository (the project's spec folder).
_UNSHIPPED = re.compile(r"\s*\([^()]*(?:algorithms\.md|(?:\.\./)+shared/)[^()]*\)"
                        r"|\s*algorithms\.md(?:\s+[A-Z]?\d+(?:\.\d+)*)?|\s*(?:\.\./)+shared/\S*")
_LINKABLE = re.compile(r"(?P<url>https?://[^\s,;()<>\"']+[^\s,;()<>\"'.])"
                       r"|(?P<arxiv>arXiv[: ](?P<id>\d{4}\.\d{4,5}))")


@dataclass
class MergedRow(Row):
    """A reported row that several sources print with identical numbers: each (source,
    setting) is kept, the row is shown once (:func:`merge_duplicates`)."""

    sources: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Axes:
    """The plot's frame: radius ``0..rmax`` and accuracy ``0..1`` to viewBox coordinates."""

    rmax: float
    width: int = 640
    height: int = 300
    left: int = 46
    right: int = 14
    top: int = 12
    bottom: int = 38

    def x(self, r: float) -> float:
        return self.left + (self.width - self.left - self.right) * r / self.rmax

    def y(self, v: float) -> float:
        return self.top + (self.height - self.top - self.bottom) * (1 - v)


@dataclass
class Curve:
    """One plotted row: polylines (pen lifted between them) in data units, the data points
    it was drawn from, and the run's maximum certifiable radius (None if unknown)."""

    label: str
    kind: str
    color: str
    dash: str
    segments: list[list[tuple[float, float]]]
    points: list[tuple[float, float]] = field(default_factory=list)
    max_radius: float | None = None
    max_level: float | None = None
    note: str = ""


@dataclass
class Group:
    """One comparison group: its rows (ranked), plot, legend and title."""

    title: str
    rows: list[dict[str, Any]]
    plot: Markup
    grid: list[float]
    legend: list[dict[str, Any]] = field(default_factory=list)
    anchor: str = ""


def _environment() -> Environment:
    return Environment(loader=PackageLoader("bench.reports", "templates"),
                       autoescape=select_autoescape(["html", "xml"], default=True),
                       trim_blocks=True, lstrip_blocks=True)


def rank_score(row: Row, grid: Sequence[float]) -> float:
    """Area under the certified-accuracy curve on the grid (missing radii count 0)."""
    return sum(v for r in grid if isinstance(v := row.accuracy.get(r), float) and math.isfinite(v))


def image_scores(row: Row, grid: Sequence[float]) -> list[int] | None:
    """Per image (by index), the number of grid radii it is certified at; their mean is
    :func:`rank_score`. None without per-image data."""
    if not row.per_image:
        return None
    radii = [r for r in grid if r in row.accuracy]
    return [sum(1 for r in radii if correct and radius >= r)
            for radius, correct in (row.per_image[i] for i in sorted(row.per_image))]


def rank_test(a: Row, b: Row, grid: Sequence[float]) -> metrics.PairedTest | None:
    """Exact paired sign-flip test of the mean difference of A's and B's per-image rank
    scores (integers, so the exact law of the sum); None when not paired."""
    if not table.paired(a, b):
        return None
    return metrics.sign_flip_test(image_scores(a, grid), image_scores(b, grid))


def shared_ranks(ordered: Sequence[Row], grid: Sequence[float],
                 level: float = metrics.SIGNIFICANCE) -> list[int]:
    """Competition ranks of rows sorted by :func:`rank_score` (best first), shared on ties.

    A row takes the rank of the row above it when its score is equal to, or not
    significantly below (:func:`rank_test` at ``level``, in the top row's favour), the score
    of that rank's top row; otherwise its rank is its position. Unpaired rows share only on
    an equal score.
    """
    ranks: list[int] = []
    top = 0
    for i, row in enumerate(ordered):
        if i == 0:
            ranks.append(1)
            continue
        lead = ordered[top]
        test = rank_test(lead, row, grid)
        if (abs(rank_score(lead, grid) - rank_score(row, grid)) < 1e-9
                or (test is not None and not test.a_significantly_better(level))):
            ranks.append(ranks[top])
        else:
            ranks.append(i + 1)
            top = i
    return ranks


def rank_labels(ranks: Sequence[int]) -> list[str]:
    """``1``, or ``1=`` for a rank that more than one row shares."""
    return [f"{r}=" if ranks.count(r) > 1 else str(r) for r in ranks]


def _fmt_radius(value: float) -> str:
    return f"{value:.3f}"


def beyond_note(radius: float, row: Row) -> str:
    """The tooltip of a cell past the row's maximum certifiable radius."""
    n = f"{row.n:,}" if row.n is not None else "n/a"
    alpha = f"{row.alpha:g}" if row.alpha is not None else "n/a"
    return (f"beyond this run's maximum certifiable radius {_fmt_radius(radius)} (N = {n}, "
            f"alpha = {alpha}): no image can be certified here")


def _cell(value: float | None, mark: table.Mark | None, lo=None, hi=None,
          beyond: str = "") -> dict[str, Any]:
    if value is None or not math.isfinite(value):
        return {"text": "-", "sort": "", "best": False, "tied": False, "title": beyond,
                "ci": "", "beyond": bool(beyond), "cls": "beyond" if beyond else ""}
    ci = f"[{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and math.isfinite(lo) else ""
    title = f"95% CI over images: {100 * lo:.1f} to {100 * hi:.1f}" if ci else ""
    if mark is not None and mark.kind == "tied":
        title += ("; " if title else "") + (f"not significantly below the best (paired exact "
                                            f"test, p = {mark.p_value:.3g})")
    if beyond:
        title = beyond + ("; " + title if title else "")
    best, tied = mark is not None, mark is not None and mark.kind == "tied"
    cls = " ".join(c for c, on in (("best", best), ("tied", tied), ("beyond", beyond)) if on)
    return {"text": f"{100 * value:.1f}", "sort": f"{value:.6f}", "title": title, "ci": ci,
            "best": best, "tied": tied, "beyond": bool(beyond), "cls": cls}


def max_radius_of(row: Row, known: Mapping[str, float] | None = None) -> float | None:
    """The row's N-capped maximum certifiable radius: a run's from its card (``known``, by run
    id), else Cohen's bound sigma * PhiInv(alpha^(1/N)) where sigma, N and alpha are known
    (:func:`bench.certify.records.max_certifiable_radius`); None otherwise (envelopes, reported
    rows without alpha, cascades without a card)."""
    if row.run_id and known and row.run_id in known:
        return known[row.run_id]
    if row.envelope_of or not isinstance(row.sigma, (int, float)) or isinstance(row.sigma, bool):
        return None
    if not row.n or row.alpha is None or not 0 < row.alpha < 1 or row.sigma <= 0:
        return None
    return records.max_certifiable_radius(None, float(row.sigma), int(row.n), float(row.alpha))


def card_max_radius(card) -> float | None:
    """A stored run's maximum certifiable radius, as its summary computes it
    (:func:`bench.certify.records.card_max_certifiable_radius`); None where its identity lacks
    sigma, N or alpha."""
    try:
        return records.card_max_certifiable_radius(card)
    except (KeyError, TypeError, ValueError):
        return None


def clean_source(text: str) -> str:
    """A source without pointers to files outside the repository (the spec folder)."""
    text = re.sub(r"\(\s*\)", "", _UNSHIPPED.sub("", text))
    return re.sub(r"\s*([,;])(\s*[,;])+", r"\1", text).strip(" ,;")


def source_html(text: str, paper_url: str = "") -> Markup:
    """A source as HTML a reader can follow: URLs and arXiv ids in it become links; a source
    without any links to the method's paper (``paper_url``, http(s) only). Text is escaped."""
    text = clean_source(text)
    parts: list[str] = []
    pos = 0
    for match in _LINKABLE.finditer(text):
        if match.group("url"):
            href = match.group("url")
            shown = re.sub(r"^https?://(www\.)?", "", href).rstrip("/")
        else:
            href = f"https://arxiv.org/abs/{match.group('id')}"
            shown = match.group("arxiv")
        parts.append(str(escape(text[pos:match.start()])))
        parts.append(f'<a href="{escape(href)}">{escape(shown)}</a>')
        pos = match.end()
    if not parts:
        if paper_url.startswith(("https://", "http://")) and text:
            return Markup(f'<a href="{escape(paper_url)}">{escape(text)}</a>')  # noqa: S704
        return escape(text)
    parts.append(str(escape(text[pos:])))
    return Markup("".join(parts))  # noqa: S704 - every piece above went through escape()


def row_sources(row: Row) -> list[tuple[str, str]]:
    """(source, setting) pairs behind a row: several for a merged row."""
    if isinstance(row, MergedRow) and row.sources:
        return list(row.sources)
    return [(row.source, row.setting)] if row.source else []


def _row_view(row: Row, grid: Sequence[float], marks: Mapping[Any, table.Mark], rank: str,
              rank_sort: int, color: str, max_radius: float | None = None,
              method_anchor: str = "") -> dict[str, Any]:
    cells = []
    note = beyond_note(max_radius, row) if max_radius is not None else ""
    for r in grid:
        lo, hi = row.interval.get(r, (None, None))
        past = note if max_radius is not None and r > max_radius + 1e-9 else ""
        cells.append(_cell(row.accuracy.get(r), marks.get(r), lo, hi, past))
    links = []
    if row.folder:
        links = [("card", f"runs/{row.folder}/card.json"), ("TSV", f"runs/{row.folder}/certs.tsv")]
    elif row.paper_url.startswith(("https://", "http://")):  # never a javascript: URL
        links = [("paper", row.paper_url)]
    sources = []
    if row.kind == "reported":
        pairs = row_sources(row)
        for text, setting in pairs:
            sources.append({"html": source_html(text, row.paper_url),
                            "setting": setting if len(pairs) > 1 and setting else ""})
    elif row.device or row.source:
        text = "; ".join(x for x in (row.device, row.source) if x)
        sources.append({"html": escape(text), "setting": ""})
    return {
        "rank": rank, "rank_sort": rank_sort, "kind": row.kind, "method": row.method,
        "method_anchor": method_anchor,
        "sigma": row.sigma_label, "sigma_sort": row.sigma if isinstance(row.sigma, float) else "",
        "n0": row.n0, "n": row.n, "m": row.m, "alpha": row.alpha, "images": row.images,
        "subset": row.subset_label, "cells": cells,
        "acr": (f"{row.acr:.3f}" if row.acr is not None and math.isfinite(row.acr) else "-"),
        "acr_sort": row.acr if row.acr is not None and math.isfinite(row.acr) else "",
        "acr_best": "acr" in marks,
        "acr_tied": "acr" in marks and marks["acr"].kind == "tied",
        "abstain": (f"{100 * row.abstain:.1f}" if row.abstain is not None else "-"),
        "abstain_sort": row.abstain if row.abstain is not None else "",
        "cost": table.format_cost(row), "cost_sort": (row.classifier_passes or 0)
        + (row.diffusion_passes or 0) if row.classifier_passes is not None else "",
        "seconds": f"{row.seconds:.3f}" if row.seconds is not None else "-",
        "seconds_sort": row.seconds if row.seconds is not None else "",
        "device": row.device, "source": row.source, "sources": sources,
        "setting": row.setting, "links": links, "color": color, "run_id": row.run_id,
        "max_radius": _fmt_radius(max_radius) if max_radius is not None else "",
        "sequential": row.sequential, "certification": row.certification,
    }


def _dash_key(row: Row) -> tuple[Any, ...]:
    sigma = row.sigma if isinstance(row.sigma, (int, float)) else math.inf
    return (sigma, row.sigma_label, row.m or 1)


def dash_patterns(rows: Sequence[Row]) -> list[str]:
    """Per row, a dash pattern by sigma (and m): the same sigma, the same pattern. A second
    row of one method at one sigma and m (another setting), which would otherwise look the
    same, gets a pattern no sigma of the plot uses (else any other one of that method)."""
    keys = sorted({_dash_key(r) for r in rows})
    base = [DASHES[keys.index(_dash_key(r)) % len(DASHES)] for r in rows]
    spare = [d for d in DASHES if d not in base]
    used: dict[str, set[str]] = {}
    out = []
    for row, dash in zip(rows, base, strict=True):
        mine = used.setdefault(row.method, set())
        if dash in mine:
            dash = next((d for d in [*spare, *DASHES] if d not in mine), dash)
            if dash in spare:
                spare.remove(dash)
        mine.add(dash)
        out.append(dash)
    return out


def legend_labels(rows: Sequence[Row]) -> list[str]:
    """Legend text per row, unique within the plot: method and sigma, then m, N,
    "sequential", the setting, the kind and the run id where needed to tell rows apart."""
    labels = [f"{r.method} sigma={r.sigma_label}" + (f" {r.certification}" if r.sequential
                                                      else "") for r in rows]
    extras = [
        lambda r: f"m={r.m}" if r.m is not None else "",
        lambda r: f"N={r.n:,}" if r.n is not None else "",
        lambda r: r.setting,
        lambda r: r.kind,
        lambda r: f"run {r.run_id}" if r.run_id else "",
    ]
    for extra in extras:
        clashes: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            clashes.setdefault(label, []).append(i)
        for members in clashes.values():
            if len(members) < 2 or len({extra(rows[i]) for i in members}) < 2:
                continue
            for i in members:
                if extra(rows[i]):
                    labels[i] += " " + extra(rows[i])
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # still equal (identical rows): number them
        if label in seen or labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[i] = f"{label} #{seen[label]}"
    return labels


def build_group(rows: Sequence[Row], grid: Sequence[float], title: str,
                colors: Mapping[str, str] | None = None,
                max_radii: Mapping[str, float] | None = None, anchor: str = "",
                method_anchors: Mapping[str, str] | None = None) -> Group:
    """Rank rows of one comparison group (shared ranks on ties) and draw their curves."""
    ordered = sorted(rows, key=lambda r: -rank_score(r, grid))
    ranks = shared_ranks(ordered, grid)
    colors = colors if colors is not None else method_colors(r.method for r in ordered)
    dashes = dash_patterns(ordered)
    labels = legend_labels(ordered)
    views, curves = [], []
    for i, (row, marks, label) in enumerate(zip(ordered, table.cell_marks(ordered, grid),
                                                rank_labels(ranks), strict=True)):
        color = colors.get(row.method, PALETTE[0])
        top = max_radius_of(row, max_radii)
        views.append(_row_view(row, grid, marks, label, ranks[i], color, top,
                               (method_anchors or {}).get(row.method, "")))
        curves.append(row_curve(row, grid, labels[i], color, dashes[i], top))
    axes = Axes(rmax=plot_rmax(grid, curves))
    legend = [{"label": c.label, "color": c.color, "dash": c.dash, "kind": c.kind,
               "max_radius": _fmt_radius(c.max_radius) if c.max_radius is not None else ""}
              for c in curves]
    return Group(title=title, rows=views, plot=svg_plot(curves, grid, axes), grid=list(grid),
                 legend=legend, anchor=anchor)


def run_curve(row: Row, until: float | None = None) -> tuple[list[float], list[float]]:
    """Vertices of a row's exact step curve from its per-image radii (fraction of the images
    certified so far), extended to ``until`` (the run's maximum certifiable radius)."""
    xs, ys = step_curve(row.per_image.values(), total=len(row.per_image), until=until)
    return [float(x) for x in xs], [float(y) for y in ys]


def grid_steps(accuracy: Mapping[float, float],
               grid: Sequence[float]) -> list[list[tuple[float, float]]]:
    """A row known at grid radii only, as steps: each value holds until the next radius of
    ``grid`` (the page's grid), then drops (or rises) to the value there; where the row has no
    value at that next radius the line stops and resumes at its next value."""
    known = {float(r): float(v) for r, v in accuracy.items()
             if isinstance(v, (int, float)) and math.isfinite(v)}
    radii = sorted(set(grid) | set(known))
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for i, r in enumerate(radii):
        if r not in known:
            if current:
                segments.append(current)
            current = []
            continue
        v = known[r]
        current.append((r, v))
        if i + 1 < len(radii):
            current.append((radii[i + 1], v))
    if current:
        segments.append(current)
    return segments


def row_curve(row: Row, grid: Sequence[float], label: str, color: str, dash: str,
              max_radius: float | None = None) -> Curve:
    """The plotted form of a row: the exact step curve of a run, grid steps otherwise."""
    if row.per_image:
        xs, ys = run_curve(row, max_radius)
        level = None
        if max_radius is not None:
            level = next((y for x, y in zip(reversed(xs), reversed(ys), strict=True)
                          if x <= max_radius + 1e-12), ys[-1] if ys else 0.0)
        return Curve(label, row.kind, color, dash, [list(zip(xs, ys, strict=True))],
                     max_radius=max_radius, max_level=level)
    points = sorted((float(r), float(v)) for r, v in row.accuracy.items()
                    if isinstance(v, (int, float)) and math.isfinite(v))
    level = None
    if max_radius is not None and points:
        level = next((v for r, v in reversed(points) if r <= max_radius), points[0][1])
    return Curve(label, row.kind, color, dash, grid_steps(row.accuracy, grid), points,
                 max_radius=max_radius, max_level=level, note="grid values only, drawn as steps")


def plot_rmax(grid: Sequence[float], curves: Sequence[Curve]) -> float:
    """The radius axis: the grid, stretched to the largest maximum certifiable radius of a
    plotted run (at most twice the grid), rounded up to the tick step."""
    top = max(grid) if grid and max(grid) > 0 else 1.0
    radii = [c.max_radius for c in curves if c.max_radius is not None]
    if radii:
        top = max(top, min(max(radii), 2 * top))
    step = _tick_step(top)
    return math.ceil(top / step - 1e-9) * step


def _tick_step(rmax: float) -> float:
    for step in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0):
        if rmax / step <= 12:
            return step
    return 10.0


def _clip(points: Sequence[tuple[float, float]], rmax: float) -> list[tuple[float, float]]:
    out = []
    for r, v in points:
        if r > rmax + 1e-12:
            if out:
                out.append((rmax, out[-1][1]))
            break
        out.append((r, v))
    return out


def svg_path(segments: Sequence[Sequence[tuple[float, float]]], axes: Axes) -> str:
    """SVG path data of polylines in data units: ``M x,y L x,y ...`` per segment."""
    parts = []
    for seg in segments:
        seg = _clip(seg, axes.rmax)
        if not seg:
            continue
        coords = [f"{axes.x(r):.2f},{axes.y(v):.2f}" for r, v in seg]
        parts.append("M" + " L".join(coords))
    return " ".join(parts)


def svg_plot(curves: Sequence[Curve], grid: Sequence[float], axes: Axes | None = None) -> Markup:
    """Certified accuracy (%) against radius, one step path per row; it scales with the page
    (viewBox, width 100%); the legend is HTML next to it. Labels are escaped."""
    axes = axes or Axes(rmax=plot_rmax(grid, curves))
    w, h = axes.width, axes.height
    x0, x1, y0, y1 = axes.left, w - axes.right, axes.y(1.0), axes.y(0.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {w} {h}" '
             f'width="100%" preserveAspectRatio="xMinYMin meet" role="img" '
             f'aria-label="certified accuracy (%) versus L2 radius">']
    for tick in range(0, 101, 20):
        yy = axes.y(tick / 100)
        parts.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x1}" y2="{yy:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{x0 - 6}" y="{yy + 4:.1f}" font-size="12" '
                     f'text-anchor="end">{tick}</text>')
    step = _tick_step(axes.rmax)
    for k in range(int(round(axes.rmax / step)) + 1):
        r = k * step
        xx = axes.x(r)
        parts.append(f'<line x1="{xx:.1f}" y1="{y1}" x2="{xx:.1f}" y2="{y1 + 4}" stroke="#333"/>'
                     f'<text x="{xx:.1f}" y="{y1 + 17}" font-size="12" '
                     f'text-anchor="middle">{r:g}</text>')
    parts.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#333"/>'
                 f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{h - 4}" font-size="12" '
                 f'text-anchor="middle">L2 radius</text>')
    mid = (y0 + y1) / 2
    parts.append(f'<text x="12" y="{mid:.1f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 12 {mid:.1f})">certified accuracy (%)</text>')
    for curve in curves:
        d = svg_path(curve.segments, axes)
        if not d:
            continue
        dash = f' stroke-dasharray="{curve.dash}"' if curve.dash else ""
        name = escape(curve.label)
        parts.append(f'<path class="curve curve-{curve.kind}" fill="none" stroke="{curve.color}" '
                     f'stroke-width="2" stroke-linejoin="miter"{dash} d="{d}">'
                     f'<title>{name} ({curve.kind})</title></path>')
        for r, v in curve.points:
            if r <= axes.rmax:
                parts.append(f'<circle class="point" cx="{axes.x(r):.2f}" cy="{axes.y(v):.2f}" '
                             f'r="2.5" fill="{curve.color}"/>')
        if curve.max_radius is not None and curve.max_radius <= axes.rmax:
            xx, yy = axes.x(curve.max_radius), axes.y(curve.max_level or 0.0)
            parts.append(f'<g class="max-radius"><title>{name}: maximum certifiable radius '
                         f'{_fmt_radius(curve.max_radius)}</title><line x1="{xx:.2f}" '
                         f'y1="{yy - 7:.2f}" x2="{xx:.2f}" y2="{yy + 7:.2f}" '
                         f'stroke="{curve.color}" stroke-width="2.5"/></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label above went through escape()


# ----- duplicate reported rows ------------------------------------------------------------------
def _same_numbers(a: Row, b: Row) -> bool:
    """Equal values wherever both give one, and one row's radii contain the other's."""
    ka, kb = set(a.accuracy), set(b.accuracy)
    if not (ka <= kb or kb <= ka) or not ka & kb:
        return False
    if any(abs(a.accuracy[r] - b.accuracy[r]) > 1e-9 for r in ka & kb):
        return False
    return (a.acr is None and b.acr is None) or (
        a.acr is not None and b.acr is not None and abs(a.acr - b.acr) < 1e-9)


def _merge_key(row: Row) -> tuple[Any, ...]:
    return (row.method, row.dataset, row.sigma_label, row.group, row.n0, row.n, row.m,
            row.alpha, row.images)


def merge_duplicates(rows: Sequence[Row]) -> list[Row]:
    """Reported rows of one method, dataset, sigma and group (N0, N, m, alpha, images)
    with identical numbers (equal at every radius both give; ACR too) from different sources
    become one row citing every source (a :class:`MergedRow`; its accuracy is the union,
    its setting the first source's). Other rows pass unchanged, in their order."""
    out: list[Row] = []
    merged: dict[int, list[Row]] = {}  # position in out -> rows merged there
    for row in rows:
        if row.kind == "reported":
            for members in merged.values():
                first = members[0]
                if (_merge_key(first) == _merge_key(row)
                        and all(_same_numbers(m, row) for m in members)
                        and row.source not in {m.source for m in members}):
                    members.append(row)
                    break
            else:
                merged[len(out)] = [row]
                out.append(row)
            continue
        out.append(row)
    for pos, members in merged.items():
        if len(members) < 2:
            continue
        accuracy: dict[float, float] = {}
        for m in members:
            accuracy.update(m.accuracy)
        base = {f.name: getattr(members[0], f.name) for f in fields(Row)}
        base.update(accuracy=dict(sorted(accuracy.items())),
                    source="; ".join(m.source for m in members))
        out[pos] = MergedRow(**base, sources=tuple((m.source, m.setting) for m in members))
    return out


# ----- pages -------------------------------------------------------------------------------------
def headline(page: Mapping[str, Any], top: int = HEADLINE_ROWS) -> dict[str, Any]:
    """The index page's summary of a dataset: the top rows (by rank) of each comparison group, with
    certified accuracy at a few key radii and ACR."""
    radii = key_radii(page["grid"])
    cols = [page["grid"].index(r) for r in radii]
    groups = []
    for _, members in page["budgets"]:
        for g in members:
            rows = [{"rank": v["rank"], "method": v["method"], "kind": v["kind"],
                     "sigma": v["sigma"], "setting": v["setting"], "color": v["color"],
                     "cells": [v["cells"][c] for c in cols], "acr": v["acr"]}
                    for v in g.rows[:top]]
            groups.append({"title": g.title, "anchor": g.anchor, "rows": rows,
                           "more": max(0, len(g.rows) - top)})
    return {"radii": radii, "groups": groups}


def methods_section(rows: Sequence[Row], registry) -> list[dict[str, Any]]:
    """Each method on a page once: its description and paper (from the registry)."""
    entries = registry.methods if registry is not None else {}
    out = []
    for i, name in enumerate(sorted({r.method for r in rows})):
        entry = entries.get(name)
        desc = entry.description if entry is not None else next(
            (r.description for r in rows if r.method == name and r.description), "")
        paper = dict(entry.paper) if entry is not None else {}
        url = str(paper.get("url", ""))
        cite = ", ".join(str(paper[k]) for k in ("authors", "venue", "year") if paper.get(k))
        out.append({"name": name, "anchor": f"method-{i + 1}", "description": desc,
                    "title": str(paper.get("title", "")), "cite": cite,
                    "url": url if url.startswith(("https://", "http://")) else ""})
    return out


def dataset_page(rows: Sequence[Row], dataset: str, *,
                 colors: Mapping[str, str] | None = None,
                 max_radii: Mapping[str, float] | None = None, registry=None,
                 summaries: Sequence[records.RunSummary] = ()) -> dict[str, Any]:
    """The view model of one dataset: budgets -> comparison groups, plus envelopes, plus
    accuracy against compute where ``summaries`` (the stored runs) hold a configuration at
    several budgets (:mod:`bench.reports.compute_svg`)."""
    rows = merge_duplicates(rows)
    grid = table.grid_of(rows, dataset)
    if colors is None:
        colors = method_colors((r.method for r in rows),
                               sorted(registry.methods) if registry is not None else ())
    methods = methods_section(rows, registry)
    anchors = {m["name"]: m["anchor"] for m in methods}
    budgets: dict[Any, list[Group]] = {}
    for k, members in enumerate(table.group_rows(rows).values()):
        budgets.setdefault(members[0].budget, []).append(
            build_group(members, grid, table.group_title(members[0]), colors, max_radii,
                        f"group-{k + 1}", anchors))
    env_rows, env_notes = table.envelope_groups(rows)
    env_notes = list(dict.fromkeys(clean_source(n) for n in env_notes))  # once each
    env_groups = [build_group(m, grid, "best over sigma: " + table.group_title(m[0]), colors,
                              max_radii, f"envelope-{k + 1}", anchors)
                  for k, m in enumerate(table.group_rows(env_rows).values())]
    ordered = sorted(budgets.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    counts = {k: sum(1 for r in rows if r.kind == k) for k in table.KINDS}
    merged = sum(len(r.sources) - 1 for r in rows if isinstance(r, MergedRow))
    page = {"dataset": dataset, "grid": grid, "budgets": ordered, "envelopes": env_groups,
            "envelope_notes": env_notes, "counts": counts, "level": metrics.SIGNIFICANCE,
            "methods": methods, "merged": merged, "step_note": STEP_NOTE,
            "compute": compute_sections(summaries, grid, colors)}
    page["headline"] = headline(page)
    return page


def generated_info(now: dt.datetime | None = None) -> dict[str, str]:
    """Generation date (UTC; ``SOURCE_DATE_EPOCH`` when set, for reproducible output) and
    the certbench version."""
    if now is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
        now = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch.isdigit()
               else dt.datetime.now(dt.timezone.utc))
    return {"date": now.strftime("%Y-%m-%d"), "version": __version__}


def export_run_files(store: store_mod.Store, row: Row, out: Path) -> None:
    """Copy a run's per-image TSV and its card with metrics (its summary) into the site."""
    store.export(row.run_id, root=out, summary_name="card.json", extra={"kind": row.kind})


def build(store: store_mod.Store | None, registry, out: str | Path) -> list[Path]:
    """Write the Markdown and HTML leaderboards of every dataset with rows; return the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table.collect_rows(store, registry)
    datasets = sorted({r.dataset for r in rows})
    unsafe = [ds for ds in datasets if not SAFE_NAME.fullmatch(str(ds))]
    if unsafe:  # the name becomes a file name under --out: no path separators, no dot files
        raise ConfigError(f"dataset name {unsafe[0]!r} (a registry reported row or a stored "
                          "run) cannot name a leaderboard page; use letters, digits, - and _")
    env = _environment()
    written: list[Path] = []
    max_radii: dict[str, float] = {}
    if store is not None:
        for row in rows:
            if row.folder:
                export_run_files(store, row, out)
            if row.run_id:
                top = card_max_radius(store.run_card(row.run_id))
                if top is not None:
                    max_radii[row.run_id] = top
    # one colour per method on every page, and the same as in bench plot's figures
    colors = method_colors((r.method for r in rows),
                           sorted(registry.methods) if registry is not None else ())
    info = generated_info()
    pages = []
    for ds in datasets:
        ds_rows = merge_duplicates([r for r in rows if r.dataset == ds])
        summaries = [store.summary(r.run_id) for r in ds_rows
                     if store is not None and r.run_id and r.kind == "reproduced"]
        page = dataset_page(ds_rows, ds, colors=colors, max_radii=max_radii, registry=registry,
                            summaries=summaries)
        pages.append(page)
        html = env.get_template("dataset.html").render(page=page, kinds=KIND_NOTES, info=info)
        written.append(_write(out / f"{ds}.html", html))
        written.append(_write(out / f"{ds}.md", markdown_page(ds_rows, ds, page["compute"])))
    index = env.get_template("index.html").render(pages=pages, kinds=KIND_NOTES, info=info)
    written.append(_write(out / "index.html", index))
    written.append(_write(out / "README.md", markdown_index(pages, info)))
    return written


def markdown_page(rows: Sequence[Row], dataset: str,
                  compute: Sequence[Mapping[str, Any]] = ()) -> str:
    """The dataset's leaderboard as Markdown: kinds explained, tables, the compute each method
    needs to reach a certified accuracy (where runs at several budgets exist), links to run
    files."""
    lines = [f"# Certified L2 robustness leaderboard: {md(dataset)}", "",
             "Generated by `python -m bench leaderboard` from the results store and the "
             "registry. Rows are compared only within one comparison group (dataset, subset, "
             "alpha, budget = requested predictions per image, else N x m). The HTML page ranks "
             "rows by the area under the certified-accuracy curve; rows whose per-image scores do "
             "not differ significantly (exact paired sign-flip test of the mean score "
             "on the same images, level "
             f"{metrics.SIGNIFICANCE:g}) share a rank (1=, 2=, ...), and reported rows, which "
             "have no per-image data, are ranked by point estimate only.", ""]
    lines += [f"- **{k}**: {note}" for k, note in KIND_NOTES.items()]
    lines += ["", table.render(rows, "markdown", table.grid_of(rows, dataset)).rstrip(), ""]
    for section in compute:
        lines += [f"## {md(section['unit'])} to reach a certified accuracy", "",
                  f"The cheapest run of each method (any sigma, N) that reaches the target, on "
                  f"{section['images']:,} images at alpha {section['alpha']:g}; budgets between "
                  "two certified ones were not tried. The HTML page plots accuracy against "
                  "compute.", "", *reach_markdown(section), ""]
    runs = [r for r in rows if r.folder]
    if runs:
        lines += ["## Run files", ""]
        for r in runs:
            folder = quote(r.folder, safe="+")  # a safe name already (RunCard.folder_name)
            lines.append(f"- {md(r.kind)} {md(r.method)} sigma "
                         f"{md(r.sigma_label)}, run {md(r.run_id)}: "
                         f"[card](runs/{folder}/card.json), [TSV](runs/{folder}/certs.tsv)")
        lines.append("")
    return "\n".join(lines)


def markdown_index(pages: Sequence[Mapping[str, Any]],
                   info: Mapping[str, str] | None = None) -> str:
    lines = ["# Leaderboards", "", "Open `index.html` for the sortable tables and plots.", ""]
    if info:
        lines[-1:-1] = [f"Generated {info['date']} by certbench {info['version']}.", ""]
    for p in pages:
        c = p["counts"]
        lines.append(f"- [{md(p['dataset'])}]({quote(p['dataset'])}.md): "
                     f"{c['reproduced']} reproduced, "
                     f"{c['claimed']} claimed, {c['reported']} reported rows")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path

