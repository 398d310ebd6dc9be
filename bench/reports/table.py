"""Standardized result tables from the store and the registry (pandas + tabulate, no torch).

The rows (:mod:`bench.reports.rows`, re-exported here) are of three kinds, never mixed up:
``reproduced`` (certified by this harness), ``claimed`` (an imported per-image TSV) and
``reported`` (a paper's numbers, from the registry).

Rows are compared (best value marked, ranks) only within one *comparison group*: dataset, subset
(the very images certified), alpha and budget (the requested predictions per image, else N x m:
:func:`bench.certify.budget.tier`). The interval shown for certified accuracy is the exact two-sided
95% Clopper-Pearson interval over the image sample (k certified of n images), which says how much a
number could move on another sample of the test set; reported rows have no per-image data and so no
interval.

Ties (:func:`cell_marks`): at each radius (and for ACR) the best value of a group is marked,
and so is every row *not significantly different* from it by a paired test on the same
images, a test of the very mean the cell shows (McNemar on certified-at-r, the paired sign-flip
permutation test of the mean radius * correct for ACR; two-sided, level
:data:`bench.certify.metrics.SIGNIFICANCE`, per cell, not corrected for multiplicity); a difference
significant in the other row's favour never unmarks a row. Rows that cannot
be paired (reported rows, envelopes, rows on other images) are never marked tied: an unpaired
comparison of 10-image intervals would tie nearly everything and say little.

Choosing what is shown: :func:`with_radii` adds radii off a run's grid, computed exactly from
its per-image radii (:func:`bench.certify.metrics.certified_accuracy`); :data:`COLUMNS` names the
non-radius columns (:func:`parse_columns`). The CSV and its tidy long form (:func:`frame`) are
:func:`bench.reports.frames.rows_frame`, the frame ``load_results`` returns, with the same column
names and fractions; only Markdown and LaTeX use display headers (``r=0.25`` in %, ``ACR``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench.certify import metrics
from bench.certify.records import CI_LEVEL
from bench.data.specs import grid_for, parse_radii
from bench.errors import ConfigError
from bench.reports import escape, frames
from bench.reports.rows import (  # noqa: F401  re-exported: callers use bench.reports.table.<name>
    KINDS,
    LABEL_AWARE,
    SEQUENTIAL,
    Row,
    certification_of,
    collect_rows,
    non_default_params,
    row_from_summary,
    rows_from_registry,
    rows_from_store,
    run_config,
    run_sigma,
    with_radii,
)

FORMATS = ("markdown", "latex", "csv", "long")


# ----- grouping, best values and envelopes -------------------------------------------------------
def group_rows(rows: Iterable[Row]) -> dict[tuple[Any, ...], list[Row]]:
    """Rows by comparison group: runs first, then claims, then reported; sigma ascending."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in sorted(rows, key=_row_order):
        groups.setdefault(row.group, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[1][0])))


def _row_order(row: Row) -> tuple[Any, ...]:
    sigma = row.sigma if isinstance(row.sigma, (int, float)) else math.inf
    return (KINDS.index(row.kind), row.method, sigma, row.sigma_label, row.source)


def _group_order(row: Row) -> tuple[Any, ...]:
    return (row.dataset, KINDS.index(row.kind), row.budget or 0, row.subset_label,
            row.alpha or 0)


def grid_of(rows: Iterable[Row], dataset: str | None = None) -> list[float]:
    """The union of the rows' radii: the dataset grid (unless every row is a run on a grid of
    its own), plus every radius a row gives beyond it; a row without a value at one of them
    shows "-" there."""
    rows = list(rows)
    radii: set[float] = set()
    if not rows or not all(row.own_grid for row in rows):
        radii.update(grid_for(dataset or (rows[0].dataset if rows else "digits")))
    for row in rows:
        radii.update(row.accuracy)
    return sorted(radii)


def parse_table_radii(text: str) -> list[float]:
    """``table --radii``: comma-separated non-negative radii, returned sorted (one-line
    :class:`~bench.errors.ConfigError` otherwise)."""
    radii = parse_radii(text)
    if isinstance(radii, str):  # 'auto' chooses a run's own grid when certifying, not here
        raise ConfigError("--radii: give the radii to show, such as 0,0.25,0.5 ('auto' is an "
                          "option of 'run', not of 'table')")
    return list(radii)


def envelopes(rows: Iterable[Row]) -> list[Row]:
    """Best over sigma per radius, one row per configuration (see :func:`envelope_groups`)."""
    return envelope_groups(rows)[0]


def envelope_groups(rows: Iterable[Row]) -> tuple[list[Row], list[str]]:
    """Best over sigma per radius for each configuration within a group, as the papers
    report it, and notes on the rows left out.

    A configuration is everything but sigma that identifies a run: kind, method, group and
    :attr:`Row.config` (seed, params, procedure; a reported row's model). Models are not
    compared, since a noise-trained classifier is named per sigma; instead a configuration
    with two rows at one sigma (another model, N0, ...) gets no envelope, and a note says so.
    Only configurations with at least two sigmas get an envelope row. Taking the maximum over
    sigma per radius is optimistic (the sigma is chosen after seeing the results), so no
    interval, no ACR and no per-image data are attached to it.
    """
    rows = [row for row in rows if isinstance(row.sigma, (int, float))]
    buckets: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        buckets.setdefault((row.kind, row.method, row.group, row.config), []).append(row)
    out, notes = [], []
    for (kind, method, group, _), members in buckets.items():
        sigmas = sorted({float(m.sigma) for m in members})
        if len(sigmas) < len(members):
            twice = sorted({f"{float(m.sigma):g}" for m in members
                            if sum(float(o.sigma) == float(m.sigma) for o in members) > 1})
            notes.append(f"no envelope for {kind} {method} ({group_title(members[0])}): "
                         f"{len(members)} rows over {len(sigmas)} sigmas; sigma "
                         f"{', '.join(twice)} has more than one row with the same seed and "
                         f"params ({_ids(members)}), so a maximum would mix configurations")
            continue
        if len(sigmas) < 2:
            others = [o for o in rows if (o.kind, o.method, o.group) == (kind, method, group)
                      and o.config != members[0].config]
            if others:
                notes.append(f"{kind} {method} sigma {sigmas[0]:g} ({_ids(members)}) left out "
                             f"of the envelope: no other sigma with the same seed and params")
            continue
        first = members[0]
        out.append(Row(
            kind=kind, method=method, dataset=first.dataset, sigma=None, n0=first.n0, n=first.n,
            m=first.m, alpha=first.alpha, subset=first.subset, subset_size=first.subset_size,
            images=first.images, accuracy=metrics.envelope(m.accuracy for m in members),
            source="; ".join(sorted({m.source for m in members if m.source})),
            description=first.description, sample_key=first.sample_key,
            envelope_of=tuple(f"{s:g}" for s in sigmas), tier=first.tier, config=first.config,
            setting=first.config if kind == "reported" else first.setting,  # not a model name
            certification=first.certification,  # part of the group the members share
        ))
    return sorted(out, key=_row_order), notes


def _ids(rows: Sequence[Row]) -> str:
    return ", ".join(f"run {r.run_id}" if r.run_id else (r.source or r.method) for r in rows)


# ----- ties: paired exact tests on the same images -----------------------------------------------
@dataclass(frozen=True)
class Mark:
    """How a cell stands against its group's best: ``best`` (the highest value) or ``tied``
    (not significantly different from every best row; ``p_value``: the smallest of those
    paired tests)."""

    kind: str
    p_value: float | None = None


def paired(a: Row, b: Row) -> bool:
    """Both rows have per-image data on the very same images."""
    return (a.paired_data and b.paired_data and a.sample_key == b.sample_key
            and a.per_image.keys() == b.per_image.keys())


def paired_test(a: Row, b: Row, key: Any) -> metrics.PairedTest | None:
    """A against B on the same images: McNemar on certified-at-r for a radius ``key``, the
    sign-flip test of the mean radius * correct for ``"acr"``; None when they cannot be
    paired."""
    if not paired(a, b):
        return None
    idx = sorted(a.per_image)
    if key == "acr":
        return metrics.sign_flip_test([_rc(a.per_image[i]) for i in idx],
                                      [_rc(b.per_image[i]) for i in idx])
    if key not in a.accuracy or key not in b.accuracy:
        return None
    return metrics.mcnemar([_certified(a.per_image[i], key) for i in idx],
                           [_certified(b.per_image[i], key) for i in idx])


def _rc(image: tuple[float, int]) -> float:
    radius, correct = image
    return radius if correct else 0.0


def _certified(image: tuple[float, int], r: float) -> bool:
    radius, correct = image
    return bool(correct) and radius >= r


def _value(row: Row, key: Any) -> float | None:
    return row.acr if key == "acr" else row.accuracy.get(key)


def cell_marks(rows: Sequence[Row], grid: Sequence[float],
               level: float = metrics.SIGNIFICANCE) -> list[dict[Any, Mark]]:
    """Per row of one group, radius (or ``"acr"``) -> its :class:`Mark`, if any.

    The best value is marked (a column of zeros has no winner); a row is tied when it can be
    paired with every best row and none of those tests finds the best row significantly
    better at ``level``.
    """
    out: list[dict[Any, Mark]] = [{} for _ in rows]
    for key in [*grid, "acr"]:
        vals = [_value(row, key) for row in rows]
        finite = [v for v in vals if _finite(v)]
        if not finite or max(finite) <= 0:
            continue
        top = max(finite)
        leaders = [i for i, v in enumerate(vals) if _finite(v) and v >= top - 1e-12]
        for i in leaders:
            out[i][key] = Mark("best")
        for i, v in enumerate(vals):
            if i in leaders or not _finite(v):
                continue
            tests = [paired_test(rows[j], rows[i], key) for j in leaders]
            if all(t is not None for t in tests) and not any(
                    t.a_significantly_better(level) for t in tests):
                out[i][key] = Mark("tied", min(t.p_value for t in tests))
    return out


def marks_by_row(rows: Sequence[Row], grid: Sequence[float]) -> dict[int, dict[Any, Mark]]:
    """:func:`cell_marks` of every comparison group, keyed by ``id(row)``."""
    out: dict[int, dict[Any, Mark]] = {}
    for members in group_rows(rows).values():
        for row, marks in zip(members, cell_marks(members, grid), strict=True):
            out[id(row)] = marks
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ----- columns -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A non-radius column: its markdown/LaTeX ``header``, whether it holds numbers
    (right-aligned in LaTeX), whether it comes after the radius columns, and the columns of
    the frame (:func:`bench.reports.frames.rows_frame`) it stands for in the CSV and long
    format (``fields``: those a frame lacks, such as the wide-only ``acr_mark``, are skipped)."""

    name: str
    header: str
    numeric: bool
    after_radii: bool
    fields: tuple[str, ...]
    doc: str


def _col(name, header, numeric, after, fields, doc) -> Column:
    return Column(name, header, numeric, after, tuple(fields), doc)


COLUMNS: dict[str, Column] = {c.name: c for c in (
    _col("method", "method", False, False, ["method"],
         "method name, with its non-default params in brackets unless 'setting' is shown"),
    _col("kind", "kind", False, False, ["kind"], "reproduced, claimed or reported"),
    _col("dataset", "dataset", False, False, ["dataset"], "dataset"),
    _col("sigma", "sigma", True, False, ["sigma", "sigma_label"],
         "noise level (or envelope label)"),
    _col("n0", "N0", True, False, ["n0"], "selection samples per image"),
    _col("n", "N", True, False, ["n"], "estimation samples per image"),
    _col("m", "m", True, False, ["m"], "predictions per noisy sample"),
    _col("alpha", "alpha", True, False, ["alpha"], "certificate failure probability"),
    _col("budget", "budget", True, False, ["budget"], "predictions per image"),
    _col("subset", "subset", False, False, ["subset", "subset_size"], "images certified"),
    _col("images", "images", True, False, ["images"], "images behind the numbers"),
    _col("certification", "certification", False, False, ["certification"],
         "fixed (N samples), sequential or sequential label-aware"),
    _col("run", "run", False, False, ["run_id"], "run id in the store"),
    _col("setting", "setting", False, False, ["setting"],
         "non-default params (runs) or a paper's setting"),
    _col("acr", "ACR", True, True, ["acr", "acr_mark", "acr_p_vs_best"],
         "average certified radius"),
    _col("abstain", "abstain %", True, True, ["abstain"], "abstain rate"),
    _col("passes", "passes/img", True, True, ["classifier_passes", "diffusion_passes"],
         "network passes per image"),
    _col("seconds", "s/img", True, True, ["seconds"], "seconds per image"),
    _col("device", "device / source", False, True, ["device"],
         "device (a claimed or reported row's source there unless 'source' is shown)"),
    _col("source", "source", False, True, ["source"], "imported file or paper"),
)}
DEFAULT_COLUMNS = ("method", "kind", "sigma", "n0", "n", "m", "alpha", "subset", "acr",
                   "abstain", "passes", "seconds", "device")
# The measurement columns of the long format (after the frame's run columns).
LONG_VALUES = (*frames.LONG_VALUES, *frames.MARK_VALUES)


def parse_columns(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--columns``: comma-separated names of :data:`COLUMNS` (any case), in the order to
    show; radius columns go before the first of acr, abstain, passes, seconds, device and
    source. An unknown name is a one-line :class:`~bench.errors.ConfigError` naming the valid
    ones (and the closest)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        name = part.strip().lower()
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, list(COLUMNS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--columns: unknown column {part.strip()!r}{hint}; valid names: "
                              + ", ".join(COLUMNS))
        if name not in names:
            names.append(name)
    return tuple(names)


def _split_columns(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns before the radii, columns after them), each in the given order."""
    return ([c for c in columns if not COLUMNS[c].after_radii],
            [c for c in columns if COLUMNS[c].after_radii])


def _certification(row: Row) -> str:
    return row.certification or "fixed"


# ----- pandas frame and rendering ----------------------------------------------------------------
def group_title(row: Row) -> str:
    parts = [row.dataset, f"subset {row.subset_label}"]
    parts.append(f"alpha {row.alpha:g}" if row.alpha is not None else "alpha n/a")
    if row.sequential:
        parts.append(f"{row.certification} certification, at most {row.budget:,} "
                     "predictions/image" if row.budget else f"{row.certification} certification")
        if row.certification == LABEL_AWARE:
            parts.append("early exits use the test labels")
    else:
        parts.append(f"budget {row.budget:,} predictions/image" if row.budget else "budget n/a")
    return ", ".join(parts)


def frame(rows: Sequence[Row], grid: Sequence[float], columns: Sequence[str] | None = None,
          long: bool = False) -> pd.DataFrame:
    """The CSV (``long``: ``--format long``): :func:`bench.reports.frames.rows_frame` of the
    rows with their intervals and tie marks (:func:`marks_by_row`), in ``load_results``'s
    column names and fractions. ``columns`` (names of :data:`COLUMNS`) keeps only their
    :attr:`Column.fields`, before and after the radius values."""
    df = frames.rows_frame(rows, grid, long, intervals=True, marks=marks_by_row(rows, grid))
    if columns is None:
        return df
    values = [c for c in df.columns if c not in frames.RUN_COLUMNS
              and c not in ("acr_mark", "acr_p_vs_best")]
    pre, post = _split_columns(columns)
    keep = [f for name in pre for f in COLUMNS[name].fields if f in df.columns] + values \
        + [f for name in post for f in COLUMNS[name].fields if f in df.columns]
    return df[keep]


def format_cost(row: Row) -> str:
    if row.classifier_passes is None:
        return "-"
    text = f"{row.classifier_passes:,.0f}"
    if row.diffusion_passes:
        text += f" + {row.diffusion_passes:,.0f} diff."
    return text


TIE_MARK = "="  # after a bold value: not significantly different from the best
TABLE_NOTE = (
    f"Certified accuracy (%) at L2 radius r; bold: best of the group; bold with "
    f"'{TIE_MARK}': not significantly different from the best (paired "
    f"test on the same images, two-sided, level {metrics.SIGNIFICANCE:g}: exact McNemar at "
    f"each radius, sign-flip permutation test of the mean for ACR, exact or "
    f"{metrics.PERMUTATION_DRAWS:,} seeded Monte-Carlo draws; per cell, not corrected for "
    f"multiplicity; rows without per-image data on the same images, such as reported rows "
    f"and envelopes, are never marked tied); brackets: exact {CI_LEVEL:.0%} Clopper-Pearson "
    f"interval over the image sample.")

# Placeholders that survive tabulate's escaping, turned into markup per format afterwards.
_BOLD = ("\x02", "\x03")
_CI = ("\x04", "\x05")


def _marked(text: str, mark: Mark | None) -> str:
    if mark is None:
        return text
    return f"{_BOLD[0]}{text}{_BOLD[1]}" + (TIE_MARK if mark.kind == "tied" else "")


def _cells(row: Row, grid: Sequence[float], marks: Mapping[Any, Mark], ci: bool,
           missing: str = "-") -> list[str]:
    """The radius cells of a row, then its ACR cell; ``missing`` where a row has no value."""
    cells = []
    for r in grid:
        acc = row.accuracy.get(r)
        if not _finite(acc):
            cells.append(missing)
            continue
        text = _marked(f"{100 * acc:.1f}", marks.get(r))
        lo, hi = row.interval.get(r, (None, None))
        if ci and _finite(lo) and _finite(hi):
            text += f" {_CI[0]}{100 * lo:.1f}, {100 * hi:.1f}{_CI[1]}"
        cells.append(text)
    acr = _marked(f"{row.acr:.3f}", marks.get("acr")) if _finite(row.acr) else "-"
    return cells + [acr]


def _display_rows(rows: Sequence[Row], grid: Sequence[float], ci: bool,
                  esc: Callable[[Any], str], columns: Sequence[str] | None = None,
                  missing: str = "-") -> list[list[Any]]:
    """The cells of each row (``columns``: names of :data:`COLUMNS`, default
    :data:`DEFAULT_COLUMNS`); free text (method, setting, kind, sigma label, subset, device or
    source, ...) goes through ``esc``, the escape of the output format
    (:mod:`bench.reports.escape`)."""
    columns = DEFAULT_COLUMNS if columns is None else tuple(columns)
    pre, post = _split_columns(columns)
    out = []
    for row, marks in zip(rows, cell_marks(rows, grid), strict=True):
        *radius_cells, acr = _cells(row, grid, marks, ci, missing)
        out.append([*(_text_cell(c, row, acr, esc, columns) for c in pre), *radius_cells,
                    *(_text_cell(c, row, acr, esc, columns) for c in post)])
    return out


def _text_cell(name: str, row: Row, acr: str, esc: Callable[[Any], str],
               columns: Sequence[str]) -> str:
    """The markdown/LaTeX cell of column ``name`` (``acr``: the ACR cell, already marked)."""
    if name == "method":
        return esc(f"{row.method} ({row.setting})" if row.setting and "setting" not in columns
                   else row.method)
    if name == "device":
        if "source" in columns:
            return esc(row.device or "-")
        return esc(row.device or (row.source if row.kind != "reproduced" else "-"))
    if name == "acr":
        return acr
    if name == "abstain":
        return f"{100 * row.abstain:.1f}" if _finite(row.abstain) else "-"
    if name == "passes":
        return format_cost(row)
    if name == "seconds":
        return f"{row.seconds:.3f}" if _finite(row.seconds) else "-"
    if name == "alpha":
        return f"{row.alpha:g}" if row.alpha is not None else "-"
    numbers = {"n0": row.n0, "n": row.n, "m": row.m, "budget": row.budget, "images": row.images}
    if name in numbers:
        return _num(numbers[name])
    text = {"kind": row.kind, "dataset": row.dataset, "sigma": row.sigma_label,
            "subset": row.subset_label, "certification": _certification(row),
            "run": row.run_id, "setting": row.setting, "source": row.source}[name]
    return esc(text or "-")


def _num(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def headers(grid: Sequence[float], columns: Sequence[str] | None = None) -> list[str]:
    """Markdown/LaTeX headers: ``columns`` (default :data:`DEFAULT_COLUMNS`) around the radii."""
    pre, post = _split_columns(DEFAULT_COLUMNS if columns is None else columns)
    return [*(_header(c, pre + post) for c in pre), *(f"r={r:g}" for r in grid),
            *(_header(c, pre + post) for c in post)]


def _header(name: str, columns: Sequence[str]) -> str:
    return "device" if name == "device" and "source" in columns else COLUMNS[name].header


def alignment(grid: Sequence[float], columns: Sequence[str] | None = None) -> str:
    """The LaTeX column spec of :func:`headers`: ``r`` for numbers (radii, ACR, counts, cost),
    ``l`` for text."""
    pre, post = _split_columns(DEFAULT_COLUMNS if columns is None else columns)
    return ("".join("r" if COLUMNS[c].numeric else "l" for c in pre) + "r" * len(grid)
            + "".join("r" if COLUMNS[c].numeric else "l" for c in post))


def render(rows: Sequence[Row], fmt: str = "markdown", grid: Sequence[float] | None = None,
           ci: bool = True, envelope: bool = True, columns: Sequence[str] | None = None,
           missing: str = "-") -> str:
    """The standardized table: one block per comparison group, then the best-over-sigma envelopes.

    markdown and latex (booktabs, ready to paste; numbers right-aligned, text left-aligned)
    mark the best value per radius in bold within each group, and the rows statistically
    tied with it in bold followed by ``=`` (:func:`cell_marks`); notes on rows left out of the
    envelopes follow the tables. csv is one flat numeric table with interval bounds, marks and
    p-values in their own columns; long is the tidy CSV of :func:`long_frame` (envelopes with
    kind ``<kind> envelope``, as in csv).

    ``grid`` gives the radius columns (default :func:`grid_of`; a row without a value at one of
    them shows ``missing``: extend runs with :func:`with_radii` first); ``columns`` the other
    columns, names of :data:`COLUMNS` in order (default :data:`DEFAULT_COLUMNS`; csv: all of
    today's columns; long: :data:`LONG_COLUMNS`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = list(rows)
    grid = list(grid) if grid is not None else grid_of(rows)
    if columns is not None:
        columns = parse_columns(columns)
    env, env_notes = envelope_groups(rows) if envelope else ([], [])
    if fmt in ("csv", "long"):
        df = frame(rows, grid, columns, long=fmt == "long")
        if env:
            extra = frame(env, grid, columns, long=fmt == "long")
            if "kind" in extra:
                extra["kind"] = extra["kind"] + " envelope"
            df = pd.concat([df, extra], ignore_index=True)
        for col in df.columns:  # text columns only: -0.5 in a numeric column stays a number
            if not pd.api.types.is_numeric_dtype(df[col]):
                df[col] = df[col].map(escape.csv_cell)
        return df.to_csv(index=False)
    blocks = []
    for title, members in _titled_groups(rows, env):
        if fmt == "markdown":
            body = _display_rows(members, grid, ci, escape.markdown, columns, missing)
            text = tabulate(body, headers=[escape.markdown(h) for h in headers(grid, columns)],
                            tablefmt="github", disable_numparse=True)
            text = _markup(text, ("**", "**"), ("[", "]"))
            blocks.append(f"### {escape.markdown(title)}\n\n" + text)
        else:
            body = _display_rows(members, grid, ci, escape.latex, columns, missing)
            text = _booktabs([escape.latex(h) for h in headers(grid, columns)], body,
                             alignment(grid, columns))
            text = _markup(text, (r"\textbf{", "}"), (r"{\scriptsize[", "]}"))
            blocks.append(f"% {escape.latex(title)}\n" + text)
    if fmt == "markdown":
        tail = "".join(f"\nNote: {escape.markdown(n)}\n" for n in env_notes)
        return escape.markdown(TABLE_NOTE) + "\n\n" + "\n\n".join(blocks) + "\n" + tail
    tail = "".join(f"% Note: {escape.latex(n)}\n" for n in env_notes)
    return ("% " + escape.latex(TABLE_NOTE) + "\n" + "\n".join(blocks)
            + ("\n" + tail if tail else ""))


def _booktabs(header: Sequence[str], body: Sequence[Sequence[str]],
              align: str | None = None) -> str:
    """A booktabs tabular of cells that are already LaTeX (escaped free text, numbers, and
    the bold/interval placeholders), columns padded to line up; ``align`` is the column spec
    (one ``l`` or ``r`` per column; default all ``l``)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"column spec {align!r} does not fit {len(header)} columns")
    lines = [list(header), *(list(map(str, line)) for line in body)]
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]

    def row(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if a == "r" else c.ljust(w)
                  for c, w, a in zip(cells, widths, align, strict=True))
        return " " + " & ".join(padded) + " \\\\"

    return "\n".join([r"\begin{tabular}{" + align + "}", r"\toprule", row(header),
                      r"\midrule", *(row(line) for line in lines[1:]), r"\bottomrule",
                      r"\end{tabular}"])


def _titled_groups(rows: Sequence[Row], env: Sequence[Row]):
    for members in group_rows(rows).values():
        yield group_title(members[0]), members
    for members in group_rows(env).values():
        yield "best over sigma: " + group_title(members[0]), members


def _markup(text: str, bold: tuple[str, str], ci: tuple[str, str]) -> str:
    for (a, b), (x, y) in ((_BOLD, bold), (_CI, ci)):
        text = text.replace(a, x).replace(b, y)
    return text
