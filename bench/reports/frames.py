"""Results as pandas DataFrames: :func:`load_results` (``from bench import load_results``).

Reads a results store (``<path>/certbench.sqlite``, opened read-only) or a folder of exported
runs (``runs/*/certs.tsv`` with their cards, such as ``leaderboards``) without changing what it
holds and without torch: one row per run (the fields of a :class:`bench.reports.table.Row` plus
certified accuracy per radius) or one row per certificate. The numbers are the store's own
(:meth:`bench.store.database.Store.summary`); a radius off a run's grid is computed exactly from its
per-image radii (:func:`bench.reports.table.with_radii`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry.entries import load_registry
from bench.reports import table
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
        rows = [table.row_from_summary(store.summary(run.run_id)) for run in runs]
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
        own = table.run_sigma(card)
        label = own if isinstance(own, str) else f"{own:g}"
        if not any(_same_sigma(own, label, s) for s in sigmas):
            return False
    return True


def _same_sigma(own: float | str, label: str, wanted: Any) -> bool:
    if isinstance(wanted, str):
        return wanted == label
    return isinstance(own, float) and math.isclose(own, float(wanted), rel_tol=1e-9)


# ----- level="runs" ------------------------------------------------------------------------------
def runs_frame(rows: list[table.Row], radii: Iterable[float] | None = None, long: bool = False,
               registry: Any = None) -> pd.DataFrame:
    """The one run-to-DataFrame path and column naming (:data:`RUN_COLUMNS`, then ``acc@<r>``
    or the long form's): ``load_results(level="runs")`` and ``bench.evaluate`` both return it.
    ``rows``: :func:`bench.reports.table.row_from_summary` of stored runs."""
    grid = sorted({float(r) for r in radii} if radii is not None
                  else {r for row in rows for r in row.accuracy})
    rows = table.with_radii(rows, grid)
    if registry is not None:
        if isinstance(registry, (str, Path)):
            registry = load_registry(registry)
        cache: dict = {}
        rows = [replace(row, setting=table.non_default_params(row, registry, cache))
                for row in rows]
    records = []
    for row in rows:
        base = _run_fields(row)
        if long:
            for r in grid:
                lo, hi = row.interval.get(r, (math.nan, math.nan))
                records.append({**base, "radius": r, "certified_accuracy": row.accuracy[r],
                                "ci_low": lo, "ci_high": hi})
        else:
            records.append({**base, **{f"acc@{r:g}": row.accuracy[r] for r in grid}})
    columns = list(RUN_COLUMNS) + (list(LONG_VALUES) if long else [f"acc@{r:g}" for r in grid])
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in _INTS:
        df[col] = df[col].astype("Int64")
    numeric = ["sigma", "alpha", "acr", "abstain", "classifier_passes", "diffusion_passes",
               "seconds", *columns[len(RUN_COLUMNS):]]
    df[numeric] = df[numeric].astype(float)
    return df


def _run_fields(row: table.Row) -> dict[str, Any]:
    config = json.loads(row.config) if row.config else {}
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
        own = table.run_sigma(card)
        head = {"run_id": run.run_id, "kind": card.kind, "method": card.identity["method"],
                "dataset": card.identity["dataset"],
                "sigma": own if isinstance(own, float) else math.nan,
                "certification": table.certification_of(card.identity) or "fixed"}
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
