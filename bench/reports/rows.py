"""The rows of every results view (table, frames, leaderboard, plot): one :class:`Row` per run,
imported claim or paper's reported numbers, collected from a store and the registry (no torch).

Three kinds of rows, never mixed up:

* ``reproduced``: certified by this harness (a run in the store);
* ``claimed``: someone's per-image TSV imported with ``python -m bench import``;
* ``reported``: numbers printed in a paper, from the registry's ``reported`` lists.

:func:`with_radii` adds radii off a run's grid, computed exactly from its per-image radii
(:func:`bench.certify.metrics.certified_accuracy`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bench.certify import metrics
from bench.certify.budget import predictions, tier
from bench.certify.records import CI_LEVEL, RunSummary, canonical_json
from bench.store.database import Store

KINDS = ("reproduced", "claimed", "reported")


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
