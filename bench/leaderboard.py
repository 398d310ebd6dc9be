"""Leaderboards: Markdown per dataset and a static, offline HTML site (jinja2, no torch).

The site is plain files: ``index.html``, one page per dataset, ``<dataset>.md`` and, under
``runs/<run>/``, a copy of each run's protocol card and per-image TSV so every row's links work
when the folder is served or opened from disk. Nothing is loaded from a CDN: sorting is a few
lines of inline JavaScript and the plots are inline SVG written here.

Rows are ranked only against rows of the same protocol (dataset, subset, alpha, budget); the
same-compute view groups protocols by budget (requested predictions per image, else N x m).
Rank order is the area under the certified-accuracy curve on the grid (the sum over the grid
radii), which, unlike ACR, exists for reported rows too. Ranks are shared (:func:`shared_ranks`):
rows sorted by that score, a row takes the rank of the row above it when an exact sign test on
the per-image score (the number of grid radii the image is certified at; its mean is the rank
score) finds it not significantly worse than the top row of that rank. Rows without per-image
data on the same images (reported rows, envelopes) share a rank only on an equal score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from bench import metrics, table
from bench import store as store_mod
from bench.errors import ConfigError
from bench.escape import markdown as md
from bench.table import Row

KIND_NOTES = {
    "reproduced": "certified by this harness (protocol card and per-image TSV linked)",
    "claimed": "per-image TSV submitted by the authors and imported; not re-certified here",
    "reported": "numbers printed in the paper (source given); no per-image data",
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22")
DASH = {"reproduced": "", "claimed": "6 3", "reported": "2 3"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class Group:
    """One protocol: its rows (ranked), plot and title."""

    title: str
    rows: list[dict[str, Any]]
    plot: Markup
    grid: list[float]


def _environment() -> Environment:
    return Environment(loader=PackageLoader("bench", "templates"),
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
    """Exact sign test of A's against B's per-image rank score; None when not paired."""
    if not table.paired(a, b):
        return None
    return metrics.sign_test(image_scores(a, grid), image_scores(b, grid))


def shared_ranks(ordered: Sequence[Row], grid: Sequence[float],
                 level: float = metrics.SIGNIFICANCE) -> list[int]:
    """Competition ranks of rows sorted by :func:`rank_score` (best first), shared on ties.

    A row takes the rank of the row above it when its score is equal to, or not
    significantly below (:func:`rank_test` at ``level``), the score of that rank's top row;
    otherwise its rank is its position. Unpaired rows share only on an equal score.
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
                or (test is not None and not test.significant(level))):
            ranks.append(ranks[top])
        else:
            ranks.append(i + 1)
            top = i
    return ranks


def rank_labels(ranks: Sequence[int]) -> list[str]:
    """``1``, or ``1=`` for a rank that more than one row shares."""
    return [f"{r}=" if ranks.count(r) > 1 else str(r) for r in ranks]


def _cell(value: float | None, mark: table.Mark | None, lo=None, hi=None) -> dict[str, Any]:
    if value is None or not math.isfinite(value):
        return {"text": "-", "sort": "", "best": False, "tied": False, "title": "", "ci": ""}
    ci = f"[{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and math.isfinite(lo) else ""
    title = f"95% CI over images: {100 * lo:.1f} to {100 * hi:.1f}" if ci else ""
    if mark is not None and mark.kind == "tied":
        title += ("; " if title else "") + (f"not significantly below the best (paired exact "
                                            f"test, p = {mark.p_value:.3g})")
    return {"text": f"{100 * value:.1f}", "sort": f"{value:.6f}", "title": title, "ci": ci,
            "best": mark is not None, "tied": mark is not None and mark.kind == "tied"}


def _row_view(row: Row, grid: Sequence[float], marks: Mapping[Any, table.Mark], rank: str,
              rank_sort: int, color: str) -> dict[str, Any]:
    cells = []
    for r in grid:
        lo, hi = row.interval.get(r, (None, None))
        cells.append(_cell(row.accuracy.get(r), marks.get(r), lo, hi))
    links = []
    if row.folder:
        links = [("card", f"runs/{row.folder}/card.json"), ("TSV", f"runs/{row.folder}/certs.tsv")]
    elif row.paper_url.startswith(("https://", "http://")):  # never a javascript: URL
        links = [("paper", row.paper_url)]
    return {
        "rank": rank, "rank_sort": rank_sort, "kind": row.kind, "method": row.method,
        "description": row.description,
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
        "device": row.device, "source": row.source, "setting": row.setting, "links": links,
        "color": color, "run_id": row.run_id,
    }


def build_group(rows: Sequence[Row], grid: Sequence[float], title: str) -> Group:
    """Rank rows of one protocol (shared ranks on ties) and draw their curves."""
    ordered = sorted(rows, key=lambda r: -rank_score(r, grid))
    ranks = shared_ranks(ordered, grid)
    views = []
    for i, (row, marks, label) in enumerate(zip(ordered, table.cell_marks(ordered, grid),
                                                rank_labels(ranks), strict=True)):
        views.append(_row_view(row, grid, marks, label, ranks[i], PALETTE[i % len(PALETTE)]))
    plot = svg_plot([(_label(row), v["kind"], v["color"], row.accuracy)
                     for v, row in zip(views, ordered, strict=True)], grid)
    return Group(title=title, rows=views, plot=plot, grid=list(grid))


def _label(row: Row) -> str:
    """Legend text: what tells the row apart from others of the same method."""
    parts = [row.method, f"sigma={row.sigma_label}"]
    if row.setting:
        parts.append(row.setting)
    return " ".join(parts)


def svg_plot(curves: Sequence[tuple[str, str, str, Mapping[float, float]]],
             grid: Sequence[float], width: int = 620, height: int = 320) -> Markup:
    """Certified accuracy (%) against radius, one polyline per row; labels are escaped."""
    left, right, top, bottom = 48, 240, 14, 40
    height = max(height, top + 16 * len(curves) + 20)  # room for every legend entry
    pw, ph = width - left - right, height - top - bottom
    rmax = max(grid) if grid and max(grid) > 0 else 1.0

    def x(r: float) -> float:
        return left + pw * r / rmax

    def y(v: float) -> float:
        return top + ph * (1 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="certified accuracy versus radius">']
    for tick in range(0, 101, 20):
        yy = y(tick / 100)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6}" y="{yy + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{tick}</text>')
    for r in grid:
        parts.append(f'<text x="{x(r):.1f}" y="{top + ph + 16}" font-size="11" '
                     f'text-anchor="middle">{r:g}</text>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" '
                 f'stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" '
                 f'stroke="#333"/>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" font-size="12" '
                 f'text-anchor="middle">L2 radius</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + ph / 2:.1f})">certified accuracy (%)</text>')
    for i, (label, kind, color, acc) in enumerate(curves):
        pts = [(r, acc[r]) for r in sorted(acc)
               if r <= rmax and isinstance(acc[r], float) and math.isfinite(acc[r])]
        if not pts:
            continue
        dash = f' stroke-dasharray="{DASH[kind]}"' if DASH.get(kind) else ""
        coords = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in pts)
        parts.append(f'<polyline class="curve curve-{kind}" fill="none" stroke="{color}" '
                     f'stroke-width="2"{dash} points="{coords}"><title>{escape(label)} '
                     f'({kind})</title></polyline>')
        for r, v in pts:
            parts.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>')
        ly = top + 10 + 16 * i
        if ly < height - 10:
            parts.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 30}" '
                         f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>'
                         f'<text x="{left + pw + 34}" y="{ly}" font-size="11">'
                         f'{escape(_short(label))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label above went through escape()


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def dataset_page(rows: Sequence[Row], dataset: str) -> dict[str, Any]:
    """The view model of one dataset: budgets -> protocol groups, plus envelopes."""
    grid = table.grid_of(rows, dataset)
    budgets: dict[Any, list[Group]] = {}
    for members in table.group_by_protocol(rows).values():
        budgets.setdefault(members[0].budget, []).append(
            build_group(members, grid, table.protocol_title(members[0])))
    env_rows, env_notes = table.envelope_groups(rows)
    env_groups = [build_group(m, grid, "best over sigma: " + table.protocol_title(m[0]))
                  for m in table.group_by_protocol(env_rows).values()]
    ordered = sorted(budgets.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    counts = {k: sum(1 for r in rows if r.kind == k) for k in table.KINDS}
    return {"dataset": dataset, "grid": grid, "budgets": ordered, "envelopes": env_groups,
            "envelope_notes": env_notes, "counts": counts, "level": metrics.SIGNIFICANCE}


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
    if store is not None:
        for row in rows:
            if row.folder:
                export_run_files(store, row, out)
    pages = []
    for ds in datasets:
        ds_rows = [r for r in rows if r.dataset == ds]
        page = dataset_page(ds_rows, ds)
        pages.append(page)
        html = env.get_template("dataset.html").render(page=page, kinds=KIND_NOTES)
        written.append(_write(out / f"{ds}.html", html))
        written.append(_write(out / f"{ds}.md", markdown_page(ds_rows, ds)))
    index = env.get_template("index.html").render(pages=pages, kinds=KIND_NOTES)
    written.append(_write(out / "index.html", index))
    written.append(_write(out / "README.md", markdown_index(pages)))
    return written


def markdown_page(rows: Sequence[Row], dataset: str) -> str:
    """The dataset's leaderboard as Markdown: kinds explained, tables, links to run files."""
    lines = [f"# Certified L2 robustness leaderboard: {md(dataset)}", "",
             "Generated by `python -m bench leaderboard` from the results store and the "
             "registry. Rows are compared only within one protocol (dataset, subset, alpha, "
             "budget = requested predictions per image, else N x m). The HTML page ranks rows "
             "by the area under the certified-accuracy curve; rows whose per-image scores do "
             "not differ significantly (exact sign test on the same images, level "
             f"{metrics.SIGNIFICANCE:g}) share a rank (1=, 2=, ...), and reported rows, which "
             "have no per-image data, are ranked by point estimate only.", ""]
    lines += [f"- **{k}**: {note}" for k, note in KIND_NOTES.items()]
    lines += ["", table.render(rows, "markdown", table.grid_of(rows, dataset)).rstrip(), ""]
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


def markdown_index(pages: Sequence[Mapping[str, Any]]) -> str:
    lines = ["# Leaderboards", "", "Open `index.html` for the sortable tables and plots.", ""]
    for p in pages:
        c = p["counts"]
        lines.append(f"- [{md(p['dataset'])}]({quote(p['dataset'])}.md): "
                     f"{c['reproduced']} reproduced, "
                     f"{c['claimed']} claimed, {c['reported']} reported rows")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path

