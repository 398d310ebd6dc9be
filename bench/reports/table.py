"""Standardized result tables from the store and the registry (pandas + tabulate, no torch).

Three kinds of rows, never mixed up:

* ``reproduced``: certified by this harness (a run in the store);
* ``claimed``: someone's per-image TSV imported with ``python -m bench import``;
* ``reported``: numbers printed in a paper, from the registry's ``reported`` lists.

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
non-radius columns (:func:`parse_columns`); :func:`long_frame` is the tidy form, one row per
row x radius (``--format long``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench.certify import metrics
from bench.certify.budget import predictions, tier
from bench.certify.records import CI_LEVEL, RunSummary, canonical_json
from bench.data.specs import grid_for, parse_radii
from bench.errors import ConfigError
from bench.reports import escape
from bench.store.database import Store

KINDS = ("reproduced", "claimed", "reported")
FORMATS = ("markdown", "latex", "csv", "long")


@dataclass
class Row:
    """One line of a table: a run, an imported claim, or a paper's reported numbers."""

    kind: str
    method: str
    dataset: str
    sigma: float | str | None
    n0: int | None
    n: int | None
    m: int | None
    alpha: float | None
    subset: str
    subset_size: int | None
    images: int | None  # images behind the numbers (certified so far, or the paper's count)
    accuracy: dict[float, float]  # radius -> fraction in [0, 1]
    interval: dict[float, tuple[float, float]] = field(default_factory=dict)
    acr: float | None = None
    abstain: float | None = None
    classifier_passes: float | None = None
    diffusion_passes: float | None = None
    seconds: float | None = None
    device: str = ""
    run_id: str = ""
    folder: str = ""  # export folder name of a run (runs/<folder>/certs.tsv)
    source: str = ""
    setting: str = ""
    description: str = ""
    sample_key: str = ""  # identifies the exact images (runs: hash of the certified indices)
    envelope_of: tuple[str, ...] = ()  # sigmas an envelope row was taken over
    paper_url: str = ""  # the method's paper (registry), linked from reported rows
    tier: int | None = None  # a run's requested budget (bench.certify.budget.tier); None: N x m
    config: str = ""  # what identifies the configuration besides sigma (seed, params, ...)
    # A run reported on its own grid (--radii, auto) rather than the dataset's: its radii alone
    # then make the table's columns (see grid_of).
    own_grid: bool = False
    # "sequential" for a run certified with --certification sequential, "sequential label-aware"
    # with --label-aware ("" for fixed N; see certification_of): another group each, never
    # ranked against each other
    certification: str = ""
    # idx -> (radius, correct) of each certified image (runs only): for the paired tests
    per_image: dict[int, tuple[float, int]] = field(default_factory=dict, repr=False,
                                                    compare=False)

    @property
    def budget(self) -> int | None:
        """Predictions per image, the same-compute tier: a run's requested budget B (N = B // m
        may leave N x m below B), else N x m."""
        return self.tier if self.tier is not None else predictions(self.n, self.m)

    @property
    def paired_data(self) -> bool:
        return bool(self.per_image)

    @property
    def subset_label(self) -> str:
        if self.kind == "reported":
            return self.subset
        if self.subset_size and self.images is not None and self.images < self.subset_size:
            return f"{self.subset} ({self.images}/{self.subset_size})"
        return self.subset

    @property
    def group(self) -> tuple[Any, ...]:
        """The comparison group: what must be equal for two rows to be ranked against each
        other."""
        return (self.dataset, self.subset_label, self.sample_key, self.alpha, self.budget,
                self.certification)

    @property
    def sequential(self) -> bool:
        return self.certification.startswith(SEQUENTIAL)

    @property
    def sigma_label(self) -> str:
        if self.envelope_of:
            return "best of " + "/".join(self.envelope_of)
        if isinstance(self.sigma, (int, float)):
            return f"{self.sigma:g}"
        return str(self.sigma or "")


# ----- collecting rows ---------------------------------------------------------------------------
def row_from_summary(summary: RunSummary, description: str = "") -> Row:
    """One stored run (reproduced or claimed) as a table row."""
    card = summary.card
    ident = card.identity
    claimed = card.kind == "claimed"
    return Row(
        kind=card.kind, method=ident["method"], dataset=ident["dataset"],
        sigma=run_sigma(card), n0=ident.get("n0"), n=ident.get("n"), m=ident.get("m", 1),
        alpha=ident.get("alpha"), subset=ident.get("subset", ""),
        subset_size=ident.get("subset_size"), images=summary.images,
        accuracy=summary.accuracy, interval=summary.interval, acr=summary.acr,
        abstain=summary.abstain, classifier_passes=summary.classifier_passes,
        diffusion_passes=summary.diffusion_passes, seconds=summary.seconds,
        device=", ".join(summary.devices), run_id=card.run_id, folder=card.folder_name,
        source=card.extra.get("source", {}).get("file", "") if claimed else "",
        description=description, sample_key=summary.sample_key, tier=tier(card),
        config=canonical_json(run_config(ident)),
        per_image=dict(summary.per_image),
        own_grid=card.extra.get("radius_grid_source", "dataset") != "dataset",
        certification=certification_of(ident),
    )


SEQUENTIAL = "sequential"
LABEL_AWARE = "sequential label-aware"


def certification_of(identity: Mapping[str, Any]) -> str:
    """Empty (fixed N), "sequential", or "sequential label-aware": a label-aware run stops early
    on images whose selected class is wrong, which needs the test label (a saving no deployed
    classifier has), so it is labelled, grouped and paired apart from plain sequential runs."""
    if identity.get("procedure") != SEQUENTIAL:
        return ""
    return LABEL_AWARE if (identity.get("sequential") or {}).get("label_aware") else SEQUENTIAL


def run_config(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a run's configuration besides sigma: seed, params, procedure, and
    ``label_aware`` only when set (plain runs' configs are as they always were)."""
    config = {k: identity.get(k) for k in ("seed", "params", "procedure")}
    if certification_of(identity) == LABEL_AWARE:
        config["label_aware"] = True
    return config


def run_sigma(card) -> float | str:
    """The run's sigma; a cascade's scales as a label ("1/0.5/0.25 cascade"), which keeps it
    out of the best-over-sigma envelope: it already chooses among its scales per image."""
    proc = card.extra.get("procedure") or {}
    if card.identity.get("procedure") == "cascade" and proc.get("scales"):
        return "/".join(f"{s:g}" for s in proc["scales"]) + " cascade"
    return float(card.identity["sigma"])


def rows_from_store(store: Store, dataset: str | None = None,
                    descriptions: Mapping[str, str] | None = None) -> list[Row]:
    """One row per run with at least one certificate."""
    rows = []
    for run in store.runs_of(dataset):
        if not run.images:
            continue
        desc = (descriptions or {}).get(run.card.identity["method"], "")
        rows.append(row_from_summary(store.summary(run.run_id), desc))
    return rows


def rows_from_registry(registry, dataset: str | None = None) -> list[Row]:
    """The papers' numbers (``reported`` lists), percentages turned into fractions."""
    rows = []
    for entry in registry.methods.values():
        for rep in entry.reported:
            if dataset is not None and rep["dataset"] != dataset:
                continue
            images = rep.get("images")
            sigma = rep.get("sigma")
            rows.append(Row(
                kind="reported", method=entry.name, dataset=rep["dataset"],
                sigma=float(sigma) if isinstance(sigma, (int, float)) else sigma,
                n0=rep.get("N0"), n=rep.get("N"), m=rep.get("m", 1), alpha=rep.get("alpha"),
                subset=f"paper ({images} images)" if images else "paper", subset_size=images,
                images=images,
                accuracy={float(r): float(v) / 100 for r, v in rep["accuracy"].items()},
                acr=rep.get("acr"), source=rep["source"],
                setting=", ".join(str(rep[k]) for k in ("setting", "model") if rep.get(k)),
                description=entry.description, paper_url=str(entry.paper.get("url", "")),
                config=str(rep.get("setting") or ""),
            ))
    return rows


def collect_rows(store: Store | None, registry=None, dataset: str | None = None,
                 budget: int | None = None, *, reported: bool = True) -> list[Row]:
    """All rows of a dataset (runs, claims, and the registry's reported rows unless
    ``reported`` is False), optionally of one budget only. Runs are labelled with the params
    that differ from their registry entry's."""
    descriptions = {m.name: m.description for m in registry.methods.values()} if registry else {}
    rows = rows_from_store(store, dataset, descriptions) if store is not None else []
    if registry is not None:
        defaults: dict[tuple[str, str], dict[str, Any] | None] = {}  # one adapter per method
        rows = [replace(r, setting=non_default_params(r, registry, defaults))
                if not r.setting else r for r in rows]
        if reported:
            rows += rows_from_registry(registry, dataset)
    if budget is not None:
        rows = [r for r in rows if r.budget == budget]
    return rows


def non_default_params(row: Row, registry,
                       cache: dict[tuple[str, str], dict[str, Any] | None] | None = None) -> str:
    """A stored run's params that differ from its registry entry's for that dataset
    (``variant=ap``, ``denoiser=digits-ddpm``): what tells two runs of one method apart.
    ``cache`` keeps each (method, dataset)'s bound defaults across rows."""
    cache = {} if cache is None else cache
    key = (row.method, row.dataset)
    if key not in cache:
        try:
            cache[key] = registry.method(row.method).instantiate(row.dataset).params
        except Exception:  # noqa: BLE001 - a run of a method no longer registered: show nothing
            cache[key] = None
    defaults = cache[key]
    if defaults is None:
        return ""
    params = json.loads(row.config).get("params") or {}
    return ", ".join(f"{k}={_param_text(v)}" for k, v in sorted(params.items())
                     if k in defaults and _jsonable(defaults[k]) != v)


def _param_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


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


def with_radii(rows: Iterable[Row], radii: Iterable[float]) -> list[Row]:
    """The rows with certified accuracy (and its interval) at each of ``radii``.

    A value a row has is kept; a radius off a run's grid is computed exactly from the run's
    per-image radii: the fraction of its certified images that are correct with radius >= r
    (the rule of :func:`bench.certify.metrics.certified_accuracy`),
    with the exact Clopper-Pearson interval over the same images. Rows without per-image data
    (reported rows, envelopes) keep only the values they have (``table --radii`` shows n/a
    there); envelopes taken over extended runs (:func:`envelope_groups`) have every radius.
    """
    radii = [float(r) for r in radii]
    out = []
    for row in rows:
        todo = [r for r in radii if r not in row.accuracy]
        if not todo or not row.per_image:
            out.append(row)
            continue
        images = list(row.per_image.values())
        rad = [r for r, _ in images]
        correct = [c for _, c in images]
        accuracy, interval = dict(row.accuracy), dict(row.interval)
        accuracy.update(metrics.certified_accuracy(rad, correct, todo))
        for r in todo:
            interval[r] = metrics.sample_interval(metrics.certified_count(rad, correct, r),
                                                  len(images), CI_LEVEL)
        out.append(replace(row, accuracy=accuracy, interval=interval))
    return out


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
    (right-aligned in LaTeX), whether it comes after the radius columns, and the columns it
    stands for in the wide CSV (:func:`frame`) and in the long format (:func:`long_frame`)."""

    name: str
    header: str
    numeric: bool
    after_radii: bool
    csv: tuple[str, ...]
    long: tuple[str, ...]
    doc: str


def _col(name, header, numeric, after, csv, long, doc) -> Column:
    return Column(name, header, numeric, after, tuple(csv), tuple(long), doc)


COLUMNS: dict[str, Column] = {c.name: c for c in (
    _col("method", "method", False, False, ["method"], ["method"],
         "method name, with its non-default params in brackets unless 'setting' is shown"),
    _col("kind", "kind", False, False, ["kind"], ["kind"], "reproduced, claimed or reported"),
    _col("dataset", "dataset", False, False, ["dataset"], ["dataset"], "dataset"),
    _col("sigma", "sigma", True, False, ["sigma"], ["sigma"], "noise level (or envelope label)"),
    _col("n0", "N0", True, False, ["N0"], ["n0"], "selection samples per image"),
    _col("n", "N", True, False, ["N"], ["n"], "estimation samples per image"),
    _col("m", "m", True, False, ["m"], ["m"], "predictions per noisy sample"),
    _col("alpha", "alpha", True, False, ["alpha"], ["alpha"], "certificate failure probability"),
    _col("budget", "budget", True, False, ["budget"], ["budget"], "predictions per image"),
    _col("subset", "subset", False, False, ["subset"], ["subset"], "images certified"),
    _col("images", "images", True, False, ["images"], ["images"], "images behind the numbers"),
    _col("certification", "certification", False, False, ["certification"],
         ["certification"], "fixed (N samples), sequential or sequential label-aware"),
    _col("run", "run", False, False, ["run_id"], ["run_id"], "run id in the store"),
    _col("setting", "setting", False, False, ["setting"], ["setting"],
         "non-default params (runs) or a paper's setting"),
    _col("acr", "ACR", True, True, ["ACR", "ACR mark", "ACR p_vs_best"], ["acr"],
         "average certified radius"),
    _col("abstain", "abstain %", True, True, ["abstain %"], ["abstain"], "abstain rate"),
    _col("passes", "passes/img", True, True,
         ["classifier passes/img", "diffusion passes/img"],
         ["classifier_passes", "diffusion_passes"], "network passes per image"),
    _col("seconds", "s/img", True, True, ["seconds/img"], ["seconds"], "seconds per image"),
    _col("device", "device / source", False, True, ["device"], ["device"],
         "device (a claimed or reported row's source there unless 'source' is shown)"),
    _col("source", "source", False, True, ["source"], ["source"], "imported file or paper"),
)}
DEFAULT_COLUMNS = ("method", "kind", "sigma", "n0", "n", "m", "alpha", "subset", "acr",
                   "abstain", "passes", "seconds", "device")
LONG_COLUMNS = ("dataset", "kind", "method", "setting", "sigma", "n0", "n", "m", "alpha",
                "subset", "images", "budget", "certification", "run", "acr", "abstain",
                "passes", "seconds", "device", "source")
# The measurement columns of the long format, between the before- and after-radii columns.
LONG_VALUES = ("radius", "certified_accuracy", "ci_low", "ci_high", "mark", "p_vs_best")


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


def frame(rows: Sequence[Row], grid: Sequence[float],
          columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Flat numeric table (percentages, interval bounds, cost): the CSV export. ``columns``
    (names of :data:`COLUMNS`) keeps only their CSV columns and the radius columns."""
    records = []
    marks = marks_by_row(rows, grid)
    for row in rows:
        row_marks = marks.get(id(row), {})
        rec: dict[str, Any] = {
            "kind": row.kind, "method": row.method, "dataset": row.dataset,
            "sigma": row.sigma_label, "N0": row.n0, "N": row.n, "m": row.m, "alpha": row.alpha,
            "budget": row.budget, "subset": row.subset_label, "images": row.images,
        }
        for r in grid:
            acc = row.accuracy.get(r)
            rec[f"r={r:g}"] = 100 * acc if _finite(acc) else None
            lo, hi = row.interval.get(r, (None, None))
            rec[f"r={r:g} ci_low"] = 100 * lo if _finite(lo) else None
            rec[f"r={r:g} ci_high"] = 100 * hi if _finite(hi) else None
            rec[f"r={r:g} mark"], rec[f"r={r:g} p_vs_best"] = _mark_fields(row_marks.get(r))
        rec.update({
            "ACR": row.acr, "ACR mark": _mark_fields(row_marks.get("acr"))[0],
            "ACR p_vs_best": _mark_fields(row_marks.get("acr"))[1],
            "abstain %": 100 * row.abstain if _finite(row.abstain) else None,
            "classifier passes/img": row.classifier_passes,
            "diffusion passes/img": row.diffusion_passes, "seconds/img": row.seconds,
            "device": row.device, "run_id": row.run_id, "source": row.source,
            "setting": row.setting, "certification": _certification(row),
        })
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if columns is None:
        df = df.drop(columns="certification", errors="ignore")  # the CSV as it always was
    else:
        pre, post = _split_columns(columns)
        radius_cols = [c for r in grid for c in (f"r={r:g}", f"r={r:g} ci_low",
                                                  f"r={r:g} ci_high", f"r={r:g} mark",
                                                  f"r={r:g} p_vs_best")]
        keep = [c for name in pre for c in COLUMNS[name].csv] + radius_cols \
            + [c for name in post for c in COLUMNS[name].csv]
        df = df.reindex(columns=keep)
    for col in ("N0", "N", "m", "budget", "images"):
        if col in df:
            df[col] = df[col].astype("Int64")  # integers stay integers next to missing values
    pct = [c for c in df.columns if (c.startswith("r=") or c == "abstain %")
           and not c.endswith((" mark", " p_vs_best"))]
    df[pct] = df[pct].astype(float).round(6)  # 57.0, not 56.99999999999999 from 0.57 * 100
    return df


def long_frame(rows: Sequence[Row], grid: Sequence[float],
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy data: one line per row x radius of ``grid`` (``--format long``).

    ``columns`` (names of :data:`COLUMNS`, default :data:`LONG_COLUMNS`) stand for the
    long-format fields of :attr:`Column.long`; between the ones before and after the radii come
    ``radius``, ``certified_accuracy`` and its interval ``ci_low``/``ci_high`` (fractions in
    [0, 1], empty where a row has no value), ``mark`` (best/tied, :func:`cell_marks`) and
    ``p_vs_best``. ``abstain`` is a fraction too; ``certification`` is fixed, sequential or
    sequential label-aware.
    """
    pre, post = _split_columns(LONG_COLUMNS if columns is None else columns)
    marks = marks_by_row(rows, grid)
    records = []
    for row in rows:
        fields: dict[str, Any] = {
            "dataset": row.dataset, "kind": row.kind, "method": row.method,
            "setting": row.setting, "sigma": row.sigma_label, "n0": row.n0, "n": row.n,
            "m": row.m, "alpha": row.alpha, "subset": row.subset_label, "images": row.images,
            "budget": row.budget, "certification": _certification(row), "run_id": row.run_id,
            "acr": row.acr if _finite(row.acr) else None,
            "abstain": row.abstain if _finite(row.abstain) else None,
            "classifier_passes": row.classifier_passes,
            "diffusion_passes": row.diffusion_passes, "seconds": row.seconds,
            "device": row.device, "source": row.source,
        }
        head = {k: fields[k] for name in pre for k in COLUMNS[name].long}
        tail = {k: fields[k] for name in post for k in COLUMNS[name].long}
        row_marks = marks.get(id(row), {})
        for r in grid:
            acc = row.accuracy.get(r)
            lo, hi = row.interval.get(r, (None, None))
            mark, p_value = _mark_fields(row_marks.get(r))
            records.append({
                **head, "radius": float(r), "certified_accuracy": acc if _finite(acc) else None,
                "ci_low": lo if _finite(lo) else None, "ci_high": hi if _finite(hi) else None,
                "mark": mark, "p_vs_best": p_value, **tail,
            })
    names = [k for name in pre for k in COLUMNS[name].long] + list(LONG_VALUES) \
        + [k for name in post for k in COLUMNS[name].long]
    df = pd.DataFrame.from_records(records, columns=names)
    for col in ("n0", "n", "m", "budget", "images"):
        if col in df:
            df[col] = df[col].astype("Int64")
    for col in ("radius", "certified_accuracy", "ci_low", "ci_high", "p_vs_best"):
        df[col] = df[col].astype(float)
    return df


def _mark_fields(mark: Mark | None) -> tuple[str, float | None]:
    if mark is None:
        return "", None
    return mark.kind, mark.p_value


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
        make = frame if fmt == "csv" else long_frame
        df = make(rows, grid, columns)
        if env:
            extra = make(env, grid, columns)
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
