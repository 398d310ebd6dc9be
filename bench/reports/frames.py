"""Results as pandas DataFrames: :func:`load_results` (``from bench import load_results``).

Reads a results store (``<path>/certbench.sqlite``, opened read-only) or a folder of exported
runs (``runs/*/certs.tsv`` with their cards, such as ``leaderboards``) without changing what it
holds and without torch: one row per run (the fields of a :class:`bench.reports.rows.Row` plus
certified accuracy per radius) or one row per certificate. The numbers are the store's own
(:meth:`bench.store.database.Store.summary`); a radius off a run's grid is computed exactly from its
per-image radii (:func:`bench.reports.rows.with_radii`).

:func:`rows_frame` is the one row-to-DataFrame path and column naming: ``load_results``,
``bench.evaluate`` and ``python -m bench table --format csv|long`` all build their frames
with it (the table adds its intervals and tie marks, and its reported and envelope rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry.entries import load_registry
from bench.reports import rows as R
from bench.store.database import Store, StoredRun
from bench.store.exports import ExportedRuns, open_results

LEVELS = ("runs", "certificates")
# level="runs": the columns before the certified accuracy (acc@<r> or the long form's).
RUN_COLUMNS = (
    "run_id", "kind", "method", "dataset", "sigma", "sigma_label", "n0", "n", "m", "alpha",
    "subset", "subset_size", "images", "budget", "certification", "seed", "procedure", "params",
    "setting", "acr", "abstain", "classifier_passes", "diffusion_passes", "seconds", "device",
    "source", "folder", "sample_key",
)
LONG_VALUES = ("radius", "certified_accuracy", "ci_low", "ci_high")
# What the table adds (rows_frame(marks=...)): the tie mark of each cell ("best", "tied" or
# empty) and the p-value of its paired test against the best; wide, one per radius
# (mark@<r>, p_vs_best@<r>) and acr_mark, acr_p_vs_best after acr; long, one per line.
MARK_VALUES = ("mark", "p_vs_best")
# Wide names of the per-radius values: the long form's name @ the radius (certified accuracy
# is acc@<r>).
WIDE_NAMES = {"certified_accuracy": "acc", "ci_low": "ci_low", "ci_high": "ci_high",
              "mark": "mark", "p_vs_best": "p_vs_best"}
# level="certificates" (then "path" when any certificate has one).
CERT_COLUMNS = (
    "run_id", "kind", "method", "dataset", "sigma", "certification", "idx", "label", "predict",
    "radius", "correct", "n0", "n", "p_lower", "count", "top_class", "time",
    "classifier_passes", "diffusion_passes", "device", "outcome",
)
_INTS = ("n0", "n", "m", "subset_size", "images", "budget", "seed")


def load_results(path: str | Path = "results", dataset: str | None = None, *,
                 level: str = "runs", method: str | Iterable[str] | None = None,
                 sigma: float | Iterable[float] | None = None,
                 kind: str | Iterable[str] | None = None,
                 radii: Iterable[float] | None = None, long: bool = False,
                 registry: Any = None) -> pd.DataFrame:
    """The runs or certificates of a results store as a pandas DataFrame.

    ``path``: a results folder (``--results``; its ``certbench.sqlite``) or that file, or a
    folder of exported runs (``leaderboards``: each card checked against its run id); neither
    there raises :class:`FileNotFoundError` (nothing is created). Filters, each a value or
    a list of values: ``dataset``, ``method``, ``sigma`` (a number, compared with
    :func:`math.isclose`; a cascade's label such as ``"1/0.5/0.25 cascade"`` matches its
    ``sigma_label``) and ``kind`` (``reproduced`` or ``claimed``). Runs without certificates
    are left out.

    ``level="runs"``: one row per run, oldest first, with the fields of the ``table`` command's
    rows: ``run_id, kind, method, dataset, sigma`` (NaN for a cascade) ``, sigma_label, n0, n,
    m, alpha, subset, subset_size, images`` (certified so far) ``, budget`` (predictions per
    image) ``, certification`` (``fixed``, ``sequential`` or ``sequential label-aware``: never
    rank them together)
    ``, seed, procedure, params`` (JSON) ``, setting`` (params that differ from the registry's,
    only with ``registry``: a path to a registry YAML or a loaded registry) ``, acr, abstain``
    (fraction) ``, classifier_passes, diffusion_passes, seconds`` (means per image) ``, device,
    source`` (a claimed run's file) ``, folder`` (``runs/<folder>/`` exports) ``, sample_key``
    (equal for runs on the same images), then certified accuracy as a fraction in wide columns
    ``acc@0`` ``acc@0.25`` ... (``f"acc@{r:g}"``). The radii are ``radii`` when given, else the
    union of the runs' grids; a run is given every one of them, off its grid computed exactly
    from its per-image radii (fraction of certified images correct with radius >= r).
    ``long=True`` gives one row per run x radius instead, with ``radius, certified_accuracy,
    ci_low, ci_high`` (the exact 95% Clopper-Pearson interval over the images).

    ``level="certificates"``: one row per certificate, ordered by run then image index:
    ``run_id, kind, method, dataset, sigma, certification, idx, label`` (-1 when unknown)
    ``, predict`` (-1: abstain) ``, radius, correct, n0, n, p_lower, count`` (-1 for imported
    rows, which carry no counts) ``, top_class, time`` (seconds) ``, classifier_passes,
    diffusion_passes, device, outcome`` (a multi-stage procedure's ending, else empty), and
    ``path`` (the image's file) when any certificate has one.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    store = open_results(path)
    if store is None:
        raise FileNotFoundError(f"no results store or exported runs in {path}; certify with "
                                "'python -m bench run --results FOLDER' first")
    try:
        runs = [run for run in store.runs_of(dataset)
                if run.images and _wanted(run, method, sigma, kind)]
        if level == "certificates":
            return _certificates(store, runs)
        rows = [R.row_from_summary(store.summary(run.run_id)) for run in runs]
    finally:
        store.close()
    return runs_frame(rows, radii, long, registry)


# ----- filters -----------------------------------------------------------------------------------
def _values(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def _wanted(run: StoredRun, method, sigma, kind) -> bool:
    card = run.card
    methods, kinds, sigmas = _values(method), _values(kind), _values(sigma)
    if methods is not None and card.identity["method"] not in methods:
        return False
    if kinds is not None and card.kind not in kinds:
        return False
    if sigmas is not None:
        own = R.run_sigma(card)
        label = own if isinstance(own, str) else f"{own:g}"
        if not any(_same_sigma(own, label, s) for s in sigmas):
            return False
    return True


def _same_sigma(own: float | str, label: str, wanted: Any) -> bool:
    if isinstance(wanted, str):
        return wanted == label
    return isinstance(own, float) and math.isclose(own, float(wanted), rel_tol=1e-9)


# ----- level="runs" ------------------------------------------------------------------------------
def runs_frame(rows: list[R.Row], radii: Iterable[float] | None = None, long: bool = False,
               registry: Any = None) -> pd.DataFrame:
    """Stored runs as :func:`rows_frame` gives them: ``load_results(level="runs")`` and
    ``bench.evaluate`` return it. ``rows``: :func:`bench.reports.rows.row_from_summary` of stored
    runs; the radii are ``radii``, else the union of their grids, each computed exactly where a
    run's grid lacks it; ``registry`` fills ``setting`` (params that differ from the entry's)."""
    grid = sorted({float(r) for r in radii} if radii is not None
                  else {r for row in rows for r in row.accuracy})
    rows = R.with_radii(rows, grid)
    if registry is not None:
        if isinstance(registry, (str, Path)):
            registry = load_registry(registry)
        cache: dict = {}
        rows = [replace(row, setting=R.non_default_params(row, registry, cache))
                for row in rows]
    return rows_frame(rows, grid, long)


def rows_frame(rows: Sequence[R.Row], grid: Sequence[float], long: bool = False, *,
               intervals: bool = False, marks: Mapping[int, Mapping[Any, Any]] | None = None
               ) -> pd.DataFrame:
    """The one row-to-DataFrame path and column naming: :data:`RUN_COLUMNS`, then certified
    accuracy at each radius of ``grid`` as a fraction, ``acc@<r>`` (``long``: one line per row x
    radius with :data:`LONG_VALUES` instead). A row without a value at a radius (a paper's
    reported row, an envelope) has NaN there; so do its run-only fields.

    ``intervals`` adds the exact Clopper-Pearson bounds wide (``ci_low@<r>``, ``ci_high@<r>``;
    long always has them); ``marks`` (``id(row)`` -> radius or ``"acr"`` -> a mark with
    ``kind`` and ``p_value``, :func:`bench.reports.table.marks_by_row`) adds
    :data:`MARK_VALUES`."""
    values = ["certified_accuracy", *(["ci_low", "ci_high"] if intervals or long else []),
              *(MARK_VALUES if marks is not None else [])]
    records = []
    for row in rows:
        base = _run_fields(row)
        row_marks = (marks or {}).get(id(row), {})
        if marks is not None and not long:
            base["acr_mark"], base["acr_p_vs_best"] = _mark(row_marks.get("acr"))
        cells = {r: _cell(row, r, row_marks.get(r)) for r in grid}
        if long:
            records += [{**base, "radius": float(r), **{k: cells[r][k] for k in values}}
                        for r in grid]
        else:
            records.append({**base, **{f"{WIDE_NAMES[k]}@{r:g}": cells[r][k]
                                       for k in values for r in grid}})
    head = list(RUN_COLUMNS)
    if marks is not None and not long:
        head[head.index("acr") + 1:head.index("acr") + 1] = ["acr_mark", "acr_p_vs_best"]
    tail = (["radius", *values] if long
            else [f"{WIDE_NAMES[k]}@{r:g}" for k in values for r in grid])
    df = pd.DataFrame.from_records(records, columns=head + tail)
    for col in _INTS:
        df[col] = df[col].astype("Int64")
    text = {"mark", *(f"mark@{r:g}" for r in grid)}
    numeric = ["sigma", "alpha", "acr", "abstain", "classifier_passes", "diffusion_passes",
               "seconds", *(["acr_p_vs_best"] if "acr_p_vs_best" in head else []),
               *(c for c in tail if c not in text)]
    df[numeric] = df[numeric].astype(float)
    return df


def _cell(row: R.Row, r: float, mark: Any) -> dict[str, Any]:
    lo, hi = row.interval.get(r, (math.nan, math.nan))
    kind, p_value = _mark(mark)
    return {"certified_accuracy": _number(row.accuracy.get(r)), "ci_low": _number(lo),
            "ci_high": _number(hi), "mark": kind, "p_vs_best": p_value}


def _mark(mark: Any) -> tuple[str, float]:
    if mark is None:
        return "", math.nan
    return mark.kind, _number(mark.p_value)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _run_fields(row: R.Row) -> dict[str, Any]:
    # A reported row's config is the paper's setting, not a run's JSON.
    config = json.loads(row.config) if row.config and row.kind != "reported" else {}
    return {
        "run_id": row.run_id, "kind": row.kind, "method": row.method, "dataset": row.dataset,
        "sigma": row.sigma if isinstance(row.sigma, (int, float)) else math.nan,
        "sigma_label": row.sigma_label, "n0": row.n0, "n": row.n, "m": row.m,
        "alpha": row.alpha, "subset": row.subset, "subset_size": row.subset_size,
        "images": row.images, "budget": row.budget, "certification": row.certification or "fixed",
        "seed": config.get("seed"), "procedure": config.get("procedure") or "",
        "params": json.dumps(config.get("params") or {}, sort_keys=True),
        "setting": row.setting, "acr": row.acr, "abstain": row.abstain,
        "classifier_passes": row.classifier_passes, "diffusion_passes": row.diffusion_passes,
        "seconds": row.seconds, "device": row.device, "source": row.source,
        "folder": row.folder, "sample_key": row.sample_key,
    }


# ----- level="certificates" ----------------------------------------------------------------------
def _certificates(store: Store | ExportedRuns, runs: list[StoredRun]) -> pd.DataFrame:
    records, paths = [], False
    for run in runs:
        card = run.card
        own = R.run_sigma(card)
        head = {"run_id": run.run_id, "kind": card.kind, "method": card.identity["method"],
                "dataset": card.identity["dataset"],
                "sigma": own if isinstance(own, float) else math.nan,
                "certification": R.certification_of(card.identity) or "fixed"}
        for cert in store.certs(run.run_id):
            row = cert.to_row()
            paths = paths or bool(cert.path)
            records.append({**head, **{k: row[k] for k in CERT_COLUMNS if k in row},
                            "path": cert.path})
    columns = list(CERT_COLUMNS) + (["path"] if paths else [])
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in ("idx", "label", "predict", "correct", "n0", "n", "count", "top_class",
                "classifier_passes", "diffusion_passes"):
        df[col] = df[col].astype("int64")
    for col in ("sigma", "radius", "p_lower", "time"):
        df[col] = df[col].astype(float)
    return df
