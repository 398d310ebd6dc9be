"""Paper-ready figures of certified accuracy vs radius, drawn as exact step curves.

Each curve is :func:`bench.reports.curves.step_curve` of one run's per-image (radius, correct)
pairs, extended flat to the run's N-capped maximum certifiable radius, where a tick on the radius
axis marks that cap. Nothing is interpolated between grid radii.

Style, the same in every figure:

* one colour per method, from a fixed palette (Tableau 10, then the light half of Tableau 20),
  assigned by the method's rank in a fixed order of names (the registry's methods sorted, then
  any other method sorted), so a method keeps its colour whatever else a figure shows, and has
  the same colour on the leaderboard (:mod:`bench.reports.style`);
* one line style per sigma (solid, dashed, dotted, dash-dot, ...), the same sigma the same style
  across methods; where one method has several curves at one sigma (m, N, certification), its
  curves take styles in order instead;
* legend labels that tell every curve apart (``diffsmooth sigma=0.25 m=5 N=2,000``): N (and
  m) when they differ, ``sequential`` for sequentially certified runs, the image count when the
  curves are over different image sets, alpha when it differs, then seed/params, then the run
  id if still needed;
* the legend below the axes (the figure grows downwards to hold it), with a note line for
  curves over different image sets or alphas, which are shown but not comparable point by
  point.

matplotlib is imported when a figure is made, never at import, and pyplot is never used (no
global state; any backend). No torch.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.certify.budget import tier
from bench.certify.records import RunSummary
from bench.errors import CertbenchError, ConfigError
from bench.registry.entries import load_registry
from bench.reports.curves import step_curve
from bench.reports.rows import LABEL_AWARE, certification_of, run_config, run_sigma
from bench.reports.style import method_colors

FORMATS = (".pdf", ".png", ".svg")
X_LABEL = "radius (L2, [0,1] pixels)"
Y_LABEL = "certified accuracy (%)"
CAP_LABEL = "N-capped max. certifiable radius"
WIDTH, HEIGHT = 3.5, 2.6  # inches: one column of a two-column paper
PNG_DPI = 300
MAX_INCHES = 100.0  # a plot side (a poster); matplotlib refuses far larger images
FONT_PT, SMALL_PT = 8.0, 7.0
CHAR_EM = 0.6  # mean character width of DejaVu Sans, in em
LINESTYLES: tuple[Any, ...] = (
    "-", "--", ":", "-.",
    (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1, 1, 1)),
)


@dataclass
class Curve:
    """One run as a plotted curve: its step vertices (accuracy as a fraction) and its style."""

    run_id: str
    method: str
    sigma: float | str  # a cascade's scales as a label (bench.reports.rows.run_sigma)
    n: int | None
    m: int
    alpha: float | None
    sequential: bool
    images: int
    sample_key: str
    config: dict[str, Any]
    max_radius: float
    radii: np.ndarray
    accuracy: np.ndarray
    label: str = ""
    color: str = ""
    linestyle: Any = "-"
    label_aware: bool = False  # sequential with --label-aware: early exits use the test labels


def curve_of(summary: RunSummary) -> Curve:
    """A stored run's curve: ``step_curve`` of its certificates up to its maximum radius."""
    ident = summary.card.identity
    cap = float(summary.max_certifiable_radius)
    xs, ys = step_curve(summary.per_image.values(), total=summary.images, until=cap)
    return Curve(
        run_id=summary.card.run_id, method=str(ident["method"]), sigma=run_sigma(summary.card),
        n=ident.get("n"), m=int(ident.get("m") or 1), alpha=ident.get("alpha"),
        sequential=ident.get("procedure") == "sequential", images=summary.images,
        sample_key=summary.sample_key, config=run_config(ident),
        max_radius=cap, radii=xs, accuracy=ys,
        label_aware=certification_of(ident) == LABEL_AWARE,
    )


# ----- style ------------------------------------------------------------------------------------
def registry_methods(path: str | Path | None = None, extra: Sequence[str | Path] = ()
                     ) -> list[str]:
    """The registry's method names (the colour order); [] when the default registry cannot be
    read (an explicit ``path`` or ``extra`` that cannot be read is an error)."""
    try:
        return sorted(load_registry(path, extra=extra).methods)
    except CertbenchError:
        if path or extra:
            raise
        return []


def _sigma_key(sigma: float | str) -> tuple[int, float, str]:
    return (0, float(sigma), "") if isinstance(sigma, (int, float)) else (1, math.inf, str(sigma))


def _curve_order(c: Curve) -> tuple[Any, ...]:
    return (c.method, _sigma_key(c.sigma), c.m, c.n or 0, c.sequential, c.label_aware,
            c.alpha or 0, c.images, c.run_id)


def _sigma_text(sigma: float | str) -> str:
    return f"{sigma:g}" if isinstance(sigma, (int, float)) else str(sigma)


def _assign_styles(curves: list[Curve]) -> None:
    """Line style by sigma (one style per sigma across the figure), unless a method has two
    curves at one sigma: then that method's curves take styles in their order (sigma, m, N)."""
    sigmas = sorted({_sigma_key(c.sigma) for c in curves})
    for method in {c.method for c in curves}:
        group = [c for c in curves if c.method == method]
        by_sigma = len({_sigma_key(c.sigma) for c in group}) == len(group)
        for rank, c in enumerate(group):
            k = sigmas.index(_sigma_key(c.sigma)) if by_sigma else rank
            c.linestyle = LINESTYLES[k % len(LINESTYLES)]


def _assign_labels(curves: list[Curve]) -> None:
    """Labels that identify every curve: method and sigma, plus whatever else differs."""
    def varies(items: Iterable[Any]) -> bool:
        return len(set(items)) > 1

    show_n = varies(c.n for c in curves)
    mixed_images = varies(c.sample_key for c in curves)
    mixed_alpha = varies(c.alpha for c in curves)
    for c in curves:
        group = [o for o in curves if o.method == c.method]
        parts = [c.method, f"sigma={_sigma_text(c.sigma)}"]
        if varies(o.m for o in group) or (c.m != 1 and (show_n or varies(o.n for o in group))):
            parts.append(f"m={c.m}")
        if (show_n or varies(o.n for o in group)) and c.n is not None:
            parts.append(f"N={c.n:,}")
        if c.sequential:
            parts.append(LABEL_AWARE if c.label_aware else "sequential")
        if mixed_alpha and c.alpha is not None:
            parts.append(f"alpha={c.alpha:g}")
        if mixed_images:
            parts.append(f"[{c.images:,} img]")
        c.label = " ".join(parts)
    # Still equal labels (same method, sigma, m, N: another seed, params or image set).
    for label in {c.label for c in curves}:
        same = [c for c in curves if c.label == label]
        if len(same) < 2:
            continue
        extra = _config_differences(same)
        for c in same:
            c.label = " ".join([label, *extra[c.run_id]])
        if len({c.label for c in same}) < len(same):
            for c in same:
                c.label = f"{c.label} (run {c.run_id})"


def _config_differences(curves: Sequence[Curve]) -> dict[str, list[str]]:
    """Per run, ``key=value`` for the seed, params and procedure entries that differ."""
    flat = []
    for c in curves:
        items = {"seed": c.config.get("seed"), "procedure": c.config.get("procedure")}
        items.update({k: v for k, v in sorted((c.config.get("params") or {}).items())})
        flat.append(items)
    keys = sorted({k for items in flat for k in items},
                  key=lambda k: (k not in ("seed", "procedure"), k))
    differing = [k for k in keys
                 if len({json.dumps(items.get(k), sort_keys=True) for items in flat}) > 1]
    out = {}
    for c, items in zip(curves, flat, strict=True):
        out[c.run_id] = [f"{k}={_value_text(items.get(k))}" for k in differing]
    return out


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def notes_of(curves: Sequence[Curve]) -> list[str]:
    """Caption lines: what the cap tick means, and mixed image sets or alphas."""
    notes = []
    if len({c.sample_key for c in curves}) > 1:
        notes.append("Curves over different image sets ([n img]): not comparable point by "
                     "point.")
    if len({c.alpha for c in curves}) > 1:
        notes.append("Runs with different alpha (confidence): not comparable point by point.")
    return notes


# ----- the figure -------------------------------------------------------------------------------
def figure(runs: Sequence[RunSummary], *, title: str | None = None,
           max_radius: float | None = None, width: float = WIDTH, height: float = HEIGHT,
           known_methods: Sequence[str] | None = None):
    """A matplotlib Figure of the runs' certified-accuracy step curves.

    ``runs``: summaries of stored runs (``Store.summary(run_id)``), each with certificates.
    ``width`` x ``height`` (inches) is the plot's own area; the figure is taller by the
    legend below it. ``max_radius`` is the right end of the radius axis (default:
    :func:`default_max_radius`). ``known_methods`` fixes the colour order
    (:func:`bench.reports.style.method_colors`); default: the default registry's method
    names. Each curve is a
    Line2D whose gid is ``curve:<run id>``, its data the step vertices (radius, 100 x
    accuracy); the cap ticks have gid ``max-radius:<run id>``.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is the optional [plot] extra
    from matplotlib.lines import Line2D

    if not runs:
        raise ConfigError("no runs to plot")
    check_size(width, height)
    if max_radius is not None and not 0 < max_radius < math.inf:
        raise ConfigError(f"--max-radius must be a positive number, got {max_radius}")
    curves = sorted((curve_of(s) for s in runs if s.images), key=_curve_order)
    if not curves:
        raise ConfigError("the selected runs have no certificates yet")
    if known_methods is None:
        known_methods = registry_methods()
    colors = method_colors([c.method for c in curves], known_methods)
    for c in curves:
        c.color = colors[c.method]
    _assign_styles(curves)
    _assign_labels(curves)
    xmax = max_radius if max_radius is not None else default_max_radius(curves)
    hidden = sum(c.max_radius > xmax for c in curves)
    cap_label = CAP_LABEL + (f" ({hidden} beyond the axis)" if hidden else "")

    labels = [c.label for c in curves] + [cap_label]
    shown, ncol, lines = _legend_layout(labels, width)
    chars = max(20, int((width - 0.1) / (CHAR_EM * SMALL_PT / 72)))
    note_lines = [line for note in notes_of(curves) for line in textwrap.wrap(note, chars)]
    line_in = SMALL_PT * 1.4 / 72
    legend_h = (lines + len(note_lines)) * line_in + 0.15
    fig = Figure(figsize=(width, height + legend_h), layout="constrained")
    ax = fig.add_subplot()
    handles = []
    for c in curves:
        (line,) = ax.plot(c.radii, 100 * c.accuracy, color=c.color, linestyle=c.linestyle,
                          linewidth=1.1, label=c.label, gid=f"curve:{c.run_id}")
        handles.append(line)
        if c.max_radius <= xmax:  # a tick at the cap, on the radius axis
            ax.plot([c.max_radius], [0.0], linestyle="none", marker="|", markersize=7,
                    markeredgewidth=1.3, color=c.color, clip_on=False,
                    label=f"_cap {c.label}", gid=f"max-radius:{c.run_id}")
    handles.append(Line2D([], [], linestyle="none", marker="|", markersize=7,
                          markeredgewidth=1.3, color="0.25", label=cap_label))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 102)  # a level at 100% stays visible above the top grid line
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(X_LABEL, fontsize=FONT_PT)
    ax.set_ylabel(Y_LABEL, fontsize=FONT_PT)
    ax.tick_params(labelsize=SMALL_PT, width=0.6, length=2.5)
    ax.grid(True, linewidth=0.4, alpha=0.35)
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
    if title:
        ax.set_title(title, fontsize=FONT_PT)
    fig.legend(handles=handles, labels=shown, loc="outside lower center", ncols=ncol,
               fontsize=SMALL_PT, frameon=False, handlelength=2.6, columnspacing=1.0,
               borderaxespad=0.2, title="\n".join(note_lines) or None,
               title_fontsize=SMALL_PT, alignment="left")
    return fig


def check_size(width: float, height: float) -> None:
    """Plot sizes matplotlib can draw at :data:`PNG_DPI` (a ValueError on far larger images),
    checked before any store is read."""
    for name, value in (("--width", width), ("--height", height)):
        if not 0 < value <= MAX_INCHES:
            raise ConfigError(f"{name} must be between 0 and {MAX_INCHES:g} inches (a "
                              f"{PNG_DPI} dpi image at most), got {value:g}")


def default_max_radius(curves: Sequence[Curve]) -> float:
    """The radius axis' right end: past the last radius any curve is above zero, and past the
    caps close to it (not past a cap far beyond all data, e.g. a cascade's), rounded up to a
    multiple of 0.25."""
    data_end = max(float(c.radii[c.accuracy > 0].max(initial=0.0)) for c in curves)
    if data_end <= 0:
        data_end = min(c.max_radius for c in curves)
    near = [c.max_radius for c in curves if c.max_radius <= 2 * data_end]
    end = max([data_end, *near]) * 1.03
    return max(0.25, math.ceil(end / 0.25) * 0.25)


def _legend_layout(labels: Sequence[str], width: float) -> tuple[list[str], int, int]:
    """Legend texts wrapped to fit ``width`` inches, the columns that fit (an estimate from the
    longest line), and the number of text lines."""
    char_in = CHAR_EM * SMALL_PT / 72
    handle_in = 0.5
    chars = max(16, int((width - 0.1 - handle_in) / char_in))
    shown = ["\n".join(textwrap.wrap(label, chars, subsequent_indent="  ")) or label
             for label in labels]
    longest = max(len(line) for text in shown for line in text.split("\n"))
    ncol = max(1, min(len(shown), int((width - 0.1) // (longest * char_in + handle_in + 0.1))))
    heights = [text.count("\n") + 1 for text in shown]
    rows = [max(heights[k:k + ncol]) for k in range(0, len(heights), ncol)]
    return shown, ncol, sum(rows)


def check_outputs(paths: Iterable[str | Path]) -> list[Path]:
    """The output files, each ending in .pdf, .png or .svg."""
    out = [Path(p) for p in paths]
    for path in out:
        if path.suffix.lower() not in FORMATS:
            raise ConfigError(f"--out {path}: the extension picks the format, one of "
                              f"{', '.join(FORMATS)}")
    return out


def save(fig, paths: Iterable[str | Path]) -> list[Path]:
    """Write the figure to each path (format from the extension). Reproducible files: no
    creation date, fixed SVG ids; TrueType (Type 42) fonts in PDFs, as publishers ask."""
    import matplotlib  # lazy: matplotlib is the optional [plot] extra

    written = []
    for path in check_outputs(paths):
        ext = path.suffix.lower()
        metadata = {".pdf": {"Creator": "certbench", "Producer": None, "CreationDate": None},
                    ".svg": {"Creator": "certbench", "Date": None},
                    ".png": {"Software": "certbench"}}[ext]
        path.parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": "certbench"}):
            fig.savefig(path, format=ext[1:], dpi=PNG_DPI, metadata=metadata)
        written.append(path)
    return written


# ----- choosing runs from a store ---------------------------------------------------------------
def parse_sigmas(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sigmas takes numbers separated by commas "
                          f"(0.25,0.5), got {text!r}") from None


def parse_methods(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [m.strip() for m in text.split(",") if m.strip()] or None


def select(store, dataset: str, *, methods: Sequence[str] | None = None,
           sigmas: Sequence[float] | None = None,
           budget: int | None = None) -> list[RunSummary]:
    """Summaries of the dataset's runs with certificates that pass the filters. Unknown
    methods or sigmas, or a filter that selects nothing, are one-line errors naming what the
    store has."""
    runs = [r for r in store.runs_of(dataset) if r.images]
    if not runs:
        raise ConfigError(f"no runs with certificates for dataset {dataset!r} in {store.root}; "
                          "run 'python -m bench run' first")
    names = sorted({r.card.identity["method"] for r in runs})
    unknown = [m for m in (methods or ()) if m not in names]
    if unknown:
        raise ConfigError(f"no runs of method {', '.join(map(repr, unknown))} for dataset "
                          f"{dataset!r} in {store.root}; methods: {', '.join(names)}")
    have = sorted({float(r.card.identity["sigma"]) for r in runs})
    missing = [s for s in (sigmas or ()) if not any(math.isclose(s, h) for h in have)]
    if missing:
        raise ConfigError(f"no runs at sigma {', '.join(f'{s:g}' for s in missing)} for "
                          f"dataset {dataset!r} in {store.root}; sigmas: "
                          f"{', '.join(f'{s:g}' for s in have)}")
    chosen = [r for r in runs
              if (not methods or r.card.identity["method"] in methods)
              and (not sigmas or any(math.isclose(float(r.card.identity["sigma"]), s)
                                     for s in sigmas))
              and (budget is None or tier(r.card) == budget)]
    if not chosen:
        raise ConfigError(f"no runs of dataset {dataset!r} in {store.root} match "
                          f"{_filter_text(methods, sigmas, budget)}; it has: "
                          f"{_inventory(runs)}")
    return [store.summary(r.run_id) for r in chosen]


def _filter_text(methods, sigmas, budget) -> str:
    parts = []
    if methods:
        parts.append("methods " + ",".join(methods))
    if sigmas:
        parts.append("sigmas " + ",".join(f"{s:g}" for s in sigmas))
    if budget is not None:
        parts.append(f"budget {budget:,}")
    return " and ".join(parts) or "the filter"


def _inventory(runs) -> str:
    """``gaussian (sigma 0.25, 0.5; budget 100, 5,000), ...``"""
    out = []
    for name in sorted({r.card.identity["method"] for r in runs}):
        mine = [r for r in runs if r.card.identity["method"] == name]
        sig = ", ".join(f"{s:g}" for s in sorted({float(r.card.identity["sigma"]) for r in mine}))
        tiers = ", ".join(f"{b:,}" for b in sorted({tier(r.card) or 0 for r in mine}))
        out.append(f"{name} (sigma {sig}; budget {tiers})")
    return "; ".join(out)


# ----- accuracy against compute -----------------------------------------------------------------
FRONT_LABEL = "Pareto front (no run cheaper and better)"


def compute_figure(view, *, title: str | None = None, width: float = WIDTH,
                   height: float = HEIGHT, known_methods: Sequence[str] | None = None):
    """Certified accuracy at each radius of ``view`` and ACR against compute per image
    (:class:`bench.reports.compute.View`; log axis), one panel per metric: a curve per method
    and sigma (colour by method as everywhere, line style by sigma), its points the runs at
    each budget, and the Pareto front over all of them drawn as a black dotted step with rings
    on its points. Lines have gids ``compute:<metric>:<label>`` and ``pareto:<metric>``."""
    from matplotlib.figure import Figure  # lazy: matplotlib is the optional [plot] extra

    from bench.reports.compute import ACR, metric_text

    check_size(width, height)
    if known_methods is None:
        known_methods = registry_methods()
    colors = method_colors([c.method for c in view.curves], known_methods)
    sigmas = sorted({_sigma_key(c.sigma) for c in view.curves})
    panels = view.metrics
    ncol = min(2, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    labels = [c.label for c in view.curves] + [FRONT_LABEL]
    shown, lcol, lines = _legend_layout(labels, width * ncol)
    legend_h = lines * SMALL_PT * 1.4 / 72 + 0.15
    fig = Figure(figsize=(width * ncol, height * nrow + legend_h), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    handles = []
    for k, metric in enumerate(panels):
        ax = axes[k]
        scale = 1.0 if metric == ACR else 100.0
        for c in view.curves:
            style = LINESTYLES[sigmas.index(_sigma_key(c.sigma)) % len(LINESTYLES)]
            (line,) = ax.plot([p.cost for p in c.points],
                              [scale * p.metrics[metric] for p in c.points], color=colors[c.method],
                              linestyle=style, marker="o", markersize=3, linewidth=1.1,
                              label=c.label, gid=f"compute:{_metric_id(metric)}:{c.label}")
            if k == 0:
                handles.append(line)
        front = view.fronts[metric]
        xs, ys = [p.cost for p in front], [scale * p.metrics[metric] for p in front]
        (line,) = ax.step(xs, ys, where="post", color="black", linewidth=0.9,
                          linestyle=(0, (1, 1.5)),
                          marker="o", markersize=6.5, markerfacecolor="none",
                          markeredgewidth=0.9, zorder=3, label=FRONT_LABEL,
                          gid=f"pareto:{_metric_id(metric)}")
        if k == 0:
            handles.append(line)
        ax.set_xscale("log")
        ax.set_xlabel(view.unit, fontsize=FONT_PT)
        ax.set_ylabel(metric_text(metric), fontsize=FONT_PT)
        if metric != ACR:
            ax.set_ylim(0, 102)
        else:
            ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=SMALL_PT, width=0.6, length=2.5)
        ax.grid(True, which="major", linewidth=0.4, alpha=0.35)
        for spine in ax.spines.values():
            spine.set_linewidth(0.6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    note = (f"{view.images:,} images, alpha={view.alpha:g}; each point is one run "
            "(one budget)")
    fig.legend(handles=handles, labels=shown, loc="outside lower center", ncols=lcol,
               fontsize=SMALL_PT, frameon=False, handlelength=2.6, columnspacing=1.0,
               borderaxespad=0.2, title=note, title_fontsize=SMALL_PT, alignment="left")
    if title:
        fig.suptitle(title, fontsize=FONT_PT)
    return fig


def _metric_id(metric) -> str:
    return metric if isinstance(metric, str) else f"r={float(metric):g}"
