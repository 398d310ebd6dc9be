"""Same-compute comparisons: certify several methods at one budget per image.

A budget B is N x m predictions per image (the harness's estimation samples N times the
method's inner predictions m), as in DiffSmooth's Table 6: DDS at m = 1 gets N = B, DiffSmooth
at m gets N = B // m. A FLOPs budget F (``budget_flops``) gives each method instead the largest
N with (N0 + N) x its FLOPs per prediction <= F (:func:`bench.certify.budget.n_for_flops`):
equal compute, not equal predictions. Each configuration is an ordinary run, so the store
resumes or reuses it by run id, and the table reports what each actually cost (diffusion and
classifier passes, forward FLOPs, seconds per image) next to certified accuracy and ACR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.certify.budget import n_for_budget
from bench.certify.records import RunSummary
from bench.data import loaders
from bench.errors import ConfigError
from bench.registry.entries import load_registry
from bench.running.plan import RunOptions
from bench.running.runner import run


@dataclass
class CompareOptions:
    dataset: str = "digits"
    budget: int | None = 10_000  # predictions per image; None with budget_flops
    budget_flops: int | None = None  # forward FLOPs per image instead
    methods: Sequence[str] = ("dds", "diffsmooth")
    ms: Sequence[int] = (5, 10, 20)
    baseline: str | None = None  # e.g. gaussian, certified with N = budget
    base: RunOptions = field(default_factory=RunOptions)  # sigma, n0, alpha, subset, ...


@dataclass
class Row:
    method: str
    setting: str
    n: int
    m: int
    summary: RunSummary


def configurations(opts: CompareOptions) -> list[tuple[str, dict[str, Any]]]:
    """(method, param overrides) per table row: one per ``--m`` value for a method whose
    declared params include one that sets its predictions per sample (``Param(sets_m=True)``,
    e.g. DiffSmooth's m), else one row. A training-only m (SmoothAdv, consistency) does not
    change the certification cost, so expanding it would only repeat the same run."""
    if (opts.budget is None) == (opts.budget_flops is None):
        raise ConfigError("give one budget: --budget B (predictions per image) or --budget-flops "
                          "F (forward FLOPs per image)")
    if opts.budget is not None and opts.budget < 1:
        raise ConfigError(f"--budget must be a positive number of predictions, got {opts.budget}")
    if opts.budget_flops is not None and opts.budget_flops < 1:
        raise ConfigError(f"--budget-flops must be a positive number of FLOPs, got "
                          f"{opts.budget_flops}")
    if not opts.methods:
        raise ConfigError("--methods is empty; name at least one method, e.g. dds,diffsmooth")
    bad = [m for m in opts.ms if m < 1]
    if bad or not opts.ms:
        raise ConfigError(f"--m must list positive integers, got {list(opts.ms)}")
    registry = load_registry(opts.base.registry, extra=opts.base.extra_registries,
                             datasets=loaders.DATASET_NAMES)
    names = ([opts.baseline] if opts.baseline else []) + list(opts.methods)
    if len(set(names)) != len(names):
        raise ConfigError(f"each method may appear once in --methods/--baseline, got "
                          f"{', '.join(names)}")
    out: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        method = registry.method(name).instantiate(opts.dataset)
        key = method.m_param()
        if key is not None and name != opts.baseline:
            for m in opts.ms if opts.budget is not None else ():
                n_for_budget(opts.budget, int(m), name)  # fail before any model is loaded
            out += [(name, {key: int(m)}) for m in opts.ms]
        else:
            out.append((name, {}))
    return out


def compare(opts: CompareOptions) -> list[Row]:
    """Run (or resume) every configuration at the budget; one row each."""
    rows = []
    for name, params in configurations(opts):
        run_opts = replace(opts.base, method=name, dataset=opts.dataset, budget=opts.budget,
                           budget_flops=opts.budget_flops, n=None,
                           params={**opts.base.params, **params})
        if cascades(opts, name):  # its noise levels are its scales, --sigma is the others'
            run_opts = replace(run_opts, sigma=None)
        result = run(run_opts)
        s = result.summary
        n, m = s.card.identity["n"], s.card.identity["m"]
        rows.append(Row(method=name, setting=setting(s), n=n, m=m, summary=s))
    return rows


def cascades(opts: CompareOptions, name: str) -> bool:
    """Whether method ``name`` is certified by a multi-scale procedure (e.g. multiscale)."""
    registry = load_registry(opts.base.registry, extra=opts.base.extra_registries,
                             datasets=loaders.DATASET_NAMES)
    method = registry.method(name).instantiate(opts.dataset)
    return getattr(method, "PROCEDURE", "cohen") == "cascade"


def setting(summary: RunSummary) -> str:
    """N and m, and for a cascade its stages (N is per stage; the budget fits the worst case)."""
    ident = summary.card.identity
    n, m = ident["n"], ident["m"]
    stages = (summary.card.extra.get("budget") or {}).get("stages", 1)
    if stages > 1:
        return f"N = {n:,} per stage x {stages}, m = {m}"
    return f"N = {n:,}, m = {m}"


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """DiffSmooth Table 6's shape: certified accuracy per radius, ACR and cost per image."""
    if not rows:
        return "(no rows)"
    # The union of the runs' grids (--radii auto follows each run's N); "-" where a run has none.
    radii = sorted(set().union(*(r.summary.accuracy for r in rows)))
    body = []
    for r in rows:
        s = r.summary
        body.append([r.method, r.setting,
                     *(100 * s.accuracy[k] if k in s.accuracy else "-" for k in radii), s.acr,
                     s.max_certifiable_radius, s.diffusion_passes, s.classifier_passes,
                     "-" if s.flops_per_image is None else s.flops_per_image / 1e9,
                     s.seconds, s.images])
    # R max: the largest radius N and alpha allow at this sigma (smaller N, smaller R max).
    headers = ["method", "setting", *(f"{r:g}" for r in radii), "ACR", "R max",
               "diffusion passes", "classifier passes", "GFLOPs / image", "s / image",
               "images"]
    return tabulate(body, headers=headers, tablefmt="github" if markdown else "simple",
                    floatfmt=("", "", *[".1f"] * len(radii), ".3f", ".3f", ",.0f", ",.0f",
                              ",.1f", ".3f", "d"))


def describe(opts: CompareOptions, rows: Sequence[Row]) -> str:
    """One line on what was compared, for the table's caption."""
    base = opts.base
    first = rows[0].summary.card.identity if rows else {}
    images = rows[0].summary.images if rows else 0
    sigma = f"{base.sigma:g}" if base.sigma is not None else "default"
    return (f"{opts.dataset} ({base.subset}, {images} images)  sigma={sigma}  "
            f"budget={_budget_text(opts)}  N0={base.n0}  alpha={base.alpha:g}  "
            f"seed={first.get('seed', base.seed)}")


def _budget_text(opts: CompareOptions) -> str:
    if opts.budget_flops is not None:
        return f"{opts.budget_flops:.4g} FLOPs/image"
    return f"{opts.budget:,} predictions/image"


def save_markdown(path: Path, opts: CompareOptions, rows: Sequence[Row]) -> None:
    Path(path).write_text(describe(opts, rows) + "\n\n" + format_table(rows, markdown=True)
                          + "\n", encoding="utf-8")
