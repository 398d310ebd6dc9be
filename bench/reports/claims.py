"""Papers' claims checked on the same images: a claims file, a paired test each, a verdict.

A claims file (YAML) names pairs of runs and the metric a paper says one wins on::

    dataset: fashion-mnist
    claims:
      - id: smoothadv-acr-0.25
        paper: Salman et al. 2019
        claim: SmoothAdv has a higher ACR than Gaussian augmentation at sigma 0.25
        better: {method: smoothadv, sigma: 0.25}
        than: {method: gaussian, sigma: 0.25}
        metric: acr                  # or accuracy@R: certified accuracy at radius R

Each side selects exactly one run of the results by identity fields (``method``, ``sigma``,
``n``, ``procedure``, ``subset``, ``seed``, ``model``: a model name the run used, ``params``:
a sub-dict of its parameters, ``run``: a run-id prefix). The two runs are compared on the
images both certified: ``acr`` by the exact paired sign-flip test of the per-image certified
radius (radius if correct, else 0), ``accuracy@R`` by the exact McNemar test of "correct with
radius >= R". Verdicts at level 0.05, two-sided: *reproduced* (the claimed side is
significantly better), *contradicted* (the other side is significantly better) or *not
significant*; Holm's step-down adjusts the p-values over the file (the family a reader sees at
once), and the verdict uses the adjusted value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from bench.certify.metrics import PairedTest, mcnemar, sign_flip_test
from bench.certify.records import Certificate, RunCard
from bench.errors import ConfigError

LEVEL = 0.05
SELECTOR_KEYS = ("method", "sigma", "n", "n0", "procedure", "subset", "seed", "model",
                 "params", "run")
CLAIM_KEYS = ("id", "paper", "claim", "better", "than", "metric", "note")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    claim: str
    better: Mapping[str, Any]
    than: Mapping[str, Any]
    metric: str
    note: str = ""

    @property
    def radius(self) -> float | None:
        """R of ``accuracy@R``; None for ``acr``."""
        return None if self.metric == "acr" else float(self.metric.split("@", 1)[1])


@dataclass(frozen=True)
class Checked:
    """A claim with its two runs, the paired comparison on their shared images, and verdict."""

    claim: Claim
    better_run: str
    than_run: str
    images: int
    value_better: float
    value_than: float
    test: PairedTest
    p_holm: float = float("nan")

    @property
    def verdict(self) -> str:
        p = self.p_holm if not math.isnan(self.p_holm) else self.test.p_value
        if p >= LEVEL or self.test.mean_difference == 0:
            return "not significant"
        return "reproduced" if self.test.mean_difference > 0 else "contradicted"


def load_claims(path: str | Path) -> tuple[str | None, list[Claim]]:
    """The file's dataset and claims; every mistake is one line naming the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"claims file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"claims file {path} is not valid YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ConfigError(f"claims file {path} needs a top-level 'claims:' list")
    claims, seen = [], set()
    for i, raw in enumerate(data["claims"]):
        where = f"{path}: claim {i + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} is not a mapping")
        unknown = sorted(set(raw) - set(CLAIM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}; fields: "
                              + ", ".join(CLAIM_KEYS))
        for key in ("id", "better", "than", "metric"):
            if key not in raw:
                raise ConfigError(f"{where}: missing field {key!r}")
        where = f"{path}: claim {raw['id']!r}"
        if raw["id"] in seen:
            raise ConfigError(f"{where} appears twice; ids must be unique")
        seen.add(raw["id"])
        _check_metric(str(raw["metric"]), where)
        for side in ("better", "than"):
            _check_selector(raw[side], f"{where}, field {side!r}")
        claims.append(Claim(id=str(raw["id"]), paper=str(raw.get("paper", "")),
                            claim=str(raw.get("claim", "")), better=raw["better"],
                            than=raw["than"], metric=str(raw["metric"]),
                            note=str(raw.get("note", ""))))
    return data.get("dataset"), claims


def _check_metric(metric: str, where: str) -> None:
    if metric == "acr":
        return
    head, _, radius = metric.partition("@")
    try:
        ok = head == "accuracy" and float(radius) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}: metric {metric!r} is neither 'acr' nor 'accuracy@R' "
                          "(R a radius >= 0, e.g. accuracy@0.5)")


def _check_selector(sel: Any, where: str) -> None:
    if not isinstance(sel, dict) or not sel:
        raise ConfigError(f"{where} must be a non-empty mapping such as "
                          "{method: gaussian, sigma: 0.25}")
    unknown = sorted(set(sel) - set(SELECTOR_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown selector {unknown[0]!r}; selectors: "
                          + ", ".join(SELECTOR_KEYS))


def matches(card: RunCard, sel: Mapping[str, Any]) -> bool:
    """Whether a run's identity has every selected value (sigma compared with isclose)."""
    ident = card.identity
    for key, want in sel.items():
        if key == "run":
            if not card.run_id.startswith(str(want)):
                return False
        elif key == "model":
            if str(want) not in (ident.get("models") or {}):
                return False
        elif key == "params":
            have = ident.get("params") or {}
            if any(have.get(k) != v for k, v in dict(want).items()):
                return False
        elif key == "procedure":
            if ident.get("procedure", "cohen") != want:
                return False
        elif key == "sigma":
            if not math.isclose(float(ident.get("sigma", math.nan)), float(want)):
                return False
        elif ident.get(key) != want:
            return False
    return True


def select(store, dataset: str | None, sel: Mapping[str, Any], where: str) -> str:
    """The one run (with certificates) the selector names; else one line listing candidates."""
    found = [run.card for run in store.runs_of(dataset) if run.images and matches(run.card, sel)]
    if len(found) == 1:
        return found[0].run_id
    shown = ", ".join(f"{c.run_id} ({c.identity.get('method')}, sigma "
                      f"{c.identity.get('sigma')}, {c.identity.get('procedure', 'cohen')}, "
                      f"n {c.identity.get('n')})" for c in found[:6])
    if not found:
        raise ConfigError(f"{where} selects no run with certificates"
                          f"{' of ' + dataset if dataset else ''}; check the selector or "
                          "--results")
    raise ConfigError(f"{where} selects {len(found)} runs: {shown}; add a selector "
                      "(n, procedure, model, params or run: <id prefix>)")


def check(store, dataset: str | None, claims: Sequence[Claim]) -> list[Checked]:
    """Every claim tested on its runs' shared images, p-values Holm-adjusted over the list."""
    out = []
    for claim in claims:
        a = select(store, dataset, claim.better, f"claim {claim.id!r}, field 'better'")
        b = select(store, dataset, claim.than, f"claim {claim.id!r}, field 'than'")
        out.append(compare_runs(claim, a, store.certs(a), b, store.certs(b)))
    adjusted = holm([c.test.p_value for c in out])
    return [replace(c, p_holm=p) for c, p in zip(out, adjusted, strict=True)]


def compare_runs(claim: Claim, run_a: str, certs_a: Sequence[Certificate], run_b: str,
                 certs_b: Sequence[Certificate]) -> Checked:
    """The paired test of ``claim.metric`` on the images both runs certified."""
    by_a, by_b = {c.idx: c for c in certs_a}, {c.idx: c for c in certs_b}
    common = sorted(set(by_a) & set(by_b))
    if not common:
        raise ConfigError(f"claim {claim.id!r}: runs {run_a} and {run_b} share no image; "
                          "certify the same subset")
    a = [by_a[i] for i in common]
    b = [by_b[i] for i in common]
    va, vb = [_certified_radius(c) for c in a], [_certified_radius(c) for c in b]
    if claim.radius is None:
        test = sign_flip_test(va, vb)
    else:  # certified at R: correct with radius >= R (a wrong class counts with radius 0)
        va = [float(r >= claim.radius and c.correct == 1) for r, c in zip(va, a, strict=True)]
        vb = [float(r >= claim.radius and c.correct == 1) for r, c in zip(vb, b, strict=True)]
        test = mcnemar([v > 0 for v in va], [v > 0 for v in vb])
    return Checked(claim, run_a, run_b, len(common), sum(va) / len(va), sum(vb) / len(vb), test)


def _certified_radius(cert: Certificate) -> float:
    """The radius an image counts with: its radius when the certified class is right, else 0."""
    return float(cert.radius) if cert.correct == 1 else 0.0


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at the level for the whole list)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def render(checked: Sequence[Checked], *, markdown: bool = False) -> str:
    """The verdict table: claim, runs, images, both values, difference, p, Holm p, verdict."""
    from tabulate import tabulate

    rows = []
    for c in checked:
        fmt = "{:.3f}" if c.claim.radius is None else "{:.1%}"
        rows.append([c.claim.id, c.claim.paper, c.claim.metric, c.better_run, c.than_run,
                     c.images, fmt.format(c.value_better), fmt.format(c.value_than),
                     f"{c.test.wins_a}/{c.test.wins_b}", _p(c.test.p_value), _p(c.p_holm),
                     c.verdict])
    headers = ["claim", "paper", "metric", "better (run)", "than (run)", "images", "better",
               "than", "wins", "p", "p (Holm)", "verdict"]
    return tabulate(rows, headers, tablefmt="github" if markdown else "simple")


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
