"""Standardized result tables from the store and the registry (pandas + tabulate, no torch).

Three kinds of rows, never mixed up:

* ``reproduced``: certified by this harness (a run in the store);
* ``claimed``: someone's per-image TSV imported with ``python -m bench import``;
* ``reported``: numbers printed in a paper, from the registry's ``reported`` lists.

Rows are compared (best value marked, ranks) only within one *protocol*: dataset, subset (the
very images certified), alpha and budget (N x m predictions per image). The interval shown
for certified accuracy is the exact two-sided 95% Clopper-Pearson interval over the image
sample (k certified of n images), which says how much a number could move on another sample
of the test set; reported rows have no per-image data and so no interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench import metrics
from bench.budget import predictions
from bench.dataspecs import grid_for
from bench.records import CI_LEVEL, RunSummary
from bench.store import Store

KINDS = ("reproduced", "claimed", "reported")
FORMATS = ("markdown", "latex", "csv")


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

    @property
    def budget(self) -> int | None:
        """Predictions per image, N x m (the same-compute tier)."""
        return predictions(self.n, self.m)

    @property
    def subset_label(self) -> str:
        if self.kind == "reported":
            return self.subset
        if self.subset_size and self.images is not None and self.images < self.subset_size:
            return f"{self.subset} ({self.images}/{self.subset_size})"
        return self.subset

    @property
    def protocol(self) -> tuple[Any, ...]:
        """What must be equal for two rows to be ranked against each other."""
        return (self.dataset, self.subset_label, self.sample_key, self.alpha, self.budget)

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
        sigma=float(ident["sigma"]), n0=ident.get("n0"), n=ident.get("n"), m=ident.get("m", 1),
        alpha=ident.get("alpha"), subset=ident.get("subset", ""),
        subset_size=ident.get("subset_size"), images=summary.images,
        accuracy=summary.accuracy, interval=summary.interval, acr=summary.acr,
        abstain=summary.abstain, classifier_passes=summary.classifier_passes,
        diffusion_passes=summary.diffusion_passes, seconds=summary.seconds,
        device=", ".join(summary.devices), run_id=card.run_id, folder=card.folder_name,
        source=card.extra.get("source", {}).get("file", "") if claimed else "",
        description=description, sample_key=summary.sample_key,
    )


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
            ))
    return rows


def collect_rows(store: Store | None, registry=None, dataset: str | None = None,
                 budget: int | None = None) -> list[Row]:
    """All rows of a dataset (runs, claims, reported), optionally of one budget only."""
    descriptions = {m.name: m.description for m in registry.methods.values()} if registry else {}
    rows = rows_from_store(store, dataset, descriptions) if store is not None else []
    if registry is not None:
        rows += rows_from_registry(registry, dataset)
    if budget is not None:
        rows = [r for r in rows if r.budget == budget]
    return rows


# ----- grouping, best values and envelopes -------------------------------------------------------
def group_by_protocol(rows: Iterable[Row]) -> dict[tuple[Any, ...], list[Row]]:
    """Rows grouped by protocol: runs first, then claims, then reported; sigma ascending."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in sorted(rows, key=_row_order):
        groups.setdefault(row.protocol, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[1][0])))


def _row_order(row: Row) -> tuple[Any, ...]:
    sigma = row.sigma if isinstance(row.sigma, (int, float)) else math.inf
    return (KINDS.index(row.kind), row.method, sigma, row.sigma_label, row.source)


def _group_order(row: Row) -> tuple[Any, ...]:
    return (row.dataset, KINDS.index(row.kind), row.budget or 0, row.subset_label,
            row.alpha or 0)


def grid_of(rows: Iterable[Row], dataset: str | None = None) -> list[float]:
    """The dataset grid, plus any radius a reported row gives beyond it."""
    rows = list(rows)
    radii = set(grid_for(dataset or (rows[0].dataset if rows else "digits")))
    for row in rows:
        radii.update(row.accuracy)
    return sorted(radii)


def best_values(rows: Sequence[Row], grid: Sequence[float]) -> dict[Any, float]:
    """Best certified accuracy per radius (and best ACR under key 'acr') within one group."""
    best: dict[Any, float] = {}
    for r in grid:
        vals = [row.accuracy[r] for row in rows if _finite(row.accuracy.get(r))]
        if vals and max(vals) > 0:  # a column of zeros has no winner
            best[r] = max(vals)
    acrs = [row.acr for row in rows if _finite(row.acr)]
    if acrs and max(acrs) > 0:
        best["acr"] = max(acrs)
    return best


def envelopes(rows: Iterable[Row]) -> list[Row]:
    """Best over sigma per radius for each method within a protocol, as the papers report it.

    Only methods with at least two sigmas get an envelope row. Taking the maximum over sigma
    per radius is optimistic (the sigma is chosen after seeing the results), so no interval
    and no ACR are attached to it.
    """
    buckets: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if isinstance(row.sigma, (int, float)):
            buckets.setdefault((row.kind, row.method, row.protocol), []).append(row)
    out = []
    for (kind, method, _), members in buckets.items():
        sigmas = sorted({float(m.sigma) for m in members})
        if len(sigmas) < 2:
            continue
        first = members[0]
        out.append(Row(
            kind=kind, method=method, dataset=first.dataset, sigma=None, n0=first.n0, n=first.n,
            m=first.m, alpha=first.alpha, subset=first.subset, subset_size=first.subset_size,
            images=first.images, accuracy=metrics.envelope(m.accuracy for m in members),
            source="; ".join(sorted({m.source for m in members if m.source})),
            description=first.description, sample_key=first.sample_key,
            envelope_of=tuple(f"{s:g}" for s in sigmas),
        ))
    return sorted(out, key=_row_order)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ----- pandas frame and rendering ----------------------------------------------------------------
def protocol_title(row: Row) -> str:
    parts = [row.dataset, f"subset {row.subset_label}"]
    parts.append(f"alpha {row.alpha:g}" if row.alpha is not None else "alpha n/a")
    parts.append(f"budget {row.budget:,} predictions/image" if row.budget else "budget n/a")
    return ", ".join(parts)


def frame(rows: Sequence[Row], grid: Sequence[float]) -> pd.DataFrame:
    """Flat numeric table (percentages, interval bounds, cost): the CSV export."""
    records = []
    for row in rows:
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
        rec.update({
            "ACR": row.acr, "abstain %": 100 * row.abstain if _finite(row.abstain) else None,
            "classifier passes/img": row.classifier_passes,
            "diffusion passes/img": row.diffusion_passes, "seconds/img": row.seconds,
            "device": row.device, "run_id": row.run_id, "source": row.source,
            "setting": row.setting,
        })
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    for col in ("N0", "N", "m", "budget", "images"):
        if col in df:
            df[col] = df[col].astype("Int64")  # integers stay integers next to missing values
    pct = [c for c in df.columns if c.startswith("r=") or c == "abstain %"]
    df[pct] = df[pct].astype(float).round(6)  # 57.0, not 56.99999999999999 from 0.57 * 100
    return df


def format_cost(row: Row) -> str:
    if row.classifier_passes is None:
        return "-"
    text = f"{row.classifier_passes:,.0f}"
    if row.diffusion_passes:
        text += f" + {row.diffusion_passes:,.0f} diff."
    return text


# Placeholders that survive tabulate's escaping, turned into markup per format afterwards.
_BOLD = ("\x02", "\x03")
_CI = ("\x04", "\x05")


def _cells(row: Row, grid: Sequence[float], best: Mapping[Any, float], ci: bool) -> list[str]:
    cells = []
    for r in grid:
        acc = row.accuracy.get(r)
        if not _finite(acc):
            cells.append("-")
            continue
        text = f"{100 * acc:.1f}"
        if r in best and acc >= best[r] - 1e-12:
            text = f"{_BOLD[0]}{text}{_BOLD[1]}"
        lo, hi = row.interval.get(r, (None, None))
        if ci and _finite(lo) and _finite(hi):
            text += f" {_CI[0]}{100 * lo:.1f}, {100 * hi:.1f}{_CI[1]}"
        cells.append(text)
    acr = "-"
    if _finite(row.acr):
        acr = f"{row.acr:.3f}"
        if "acr" in best and row.acr >= best["acr"] - 1e-12:
            acr = f"{_BOLD[0]}{acr}{_BOLD[1]}"
    return cells + [acr]


def _display_rows(rows: Sequence[Row], grid: Sequence[float], ci: bool) -> list[list[Any]]:
    best = best_values(rows, grid)
    out = []
    for row in rows:
        out.append([
            f"{row.method} ({row.setting})" if row.setting else row.method, row.kind,
            row.sigma_label, _num(row.n0), _num(row.n), _num(row.m),
            f"{row.alpha:g}" if row.alpha is not None else "-", row.subset_label,
            *_cells(row, grid, best, ci),
            f"{100 * row.abstain:.1f}" if _finite(row.abstain) else "-",
            format_cost(row), f"{row.seconds:.3f}" if _finite(row.seconds) else "-",
            row.device or (row.source if row.kind != "reproduced" else "-"),
        ])
    return out


def _num(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def headers(grid: Sequence[float]) -> list[str]:
    return ["method", "kind", "sigma", "N0", "N", "m", "alpha", "subset",
            *(f"r={r:g}" for r in grid), "ACR", "abstain %", "passes/img", "s/img",
            "device / source"]


def render(rows: Sequence[Row], fmt: str = "markdown", grid: Sequence[float] | None = None,
           ci: bool = True, envelope: bool = True) -> str:
    """The standardized table: one block per protocol, then the best-over-sigma envelopes.

    markdown and latex (booktabs, ready to paste) mark the best value per radius in bold within
    each protocol; csv is one flat numeric table with interval bounds in their own columns.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = list(rows)
    grid = list(grid) if grid is not None else grid_of(rows)
    env = envelopes(rows) if envelope else []
    if fmt == "csv":
        df = frame(rows, grid)
        if env:
            df = pd.concat([df, frame(env, grid).assign(kind=lambda d: d["kind"] + " envelope")])
        return df.to_csv(index=False)
    blocks = []
    note = (f"Certified accuracy (%) at L2 radius r; bold: best of the protocol; brackets: exact "
            f"{CI_LEVEL:.0%} Clopper-Pearson interval over the image sample.")
    for title, members in _titled_groups(rows, env):
        body = _display_rows(members, grid, ci)
        if fmt == "markdown":
            body = [[_md_escape(str(c)) for c in line] for line in body]
            text = tabulate(body, headers=headers(grid), tablefmt="github", disable_numparse=True)
            text = _markup(text, ("**", "**"), ("[", "]"))
            blocks.append(f"### {_md_escape(title)}\n\n" + text)
        else:
            text = tabulate(body, headers=headers(grid), tablefmt="latex_booktabs",
                            disable_numparse=True)
            text = _markup(text, (r"\textbf{", "}"), (r"{\scriptsize[", "]}"))
            blocks.append(f"% {title}\n" + text)
    if fmt == "markdown":
        return note + "\n\n" + "\n\n".join(blocks) + "\n"
    return "% " + note + "\n" + "\n".join(blocks)


def _titled_groups(rows: Sequence[Row], env: Sequence[Row]):
    for members in group_by_protocol(rows).values():
        yield protocol_title(members[0]), members
    for members in group_by_protocol(env).values():
        yield "best over sigma: " + protocol_title(members[0]), members


def _markup(text: str, bold: tuple[str, str], ci: tuple[str, str]) -> str:
    for (a, b), (x, y) in ((_BOLD, bold), (_CI, ci)):
        text = text.replace(a, x).replace(b, y)
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")
