"""Certify a dataset subset with one method: plan, resume, certify, record, export.

Everything that can be wrong with a request (method, dataset, subset, sizes, registry, params,
models) is checked by :func:`prepare` before the first noisy sample. :func:`run` then hands
the images still to do to an executor and commits each certificate to the store as it
arrives; the run id is the hash of the card's identity, so the same command resumes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench import budget, datasets, procedures
from bench.devices import environment, resolve_device
from bench.errors import ConfigError
from bench.executors import SerialExecutor
from bench.models import RoleResolver, models_dir, parse_overrides
from bench.params import check_sigma
from bench.procedures import Procedure, ProcedureSpec
from bench.protocol import Context
from bench.records import PROTOCOL_VERSION, RunCard, RunSummary
from bench.registry import MethodEntry, load_registry
from bench.smoothing import chunk_size
from bench.store import Store

WARN_TOTAL_S, WARN_IMAGE_S = 3600.0, 300.0  # warn before a run estimated to take longer
NOISE_SCHEME = ("torch.randn in whole chunks from a generator seeded by SeedSequence([seed, "
                "idx, phase]); phases select=0 estimate=1")


@dataclass
class RunOptions:
    method: str = "gaussian"
    dataset: str = "digits"
    sigma: float | None = None  # None: 0.25, or the cascade's largest scale
    n0: int = 100
    n: int | None = None
    alpha: float = 0.001
    batch: int = 1024  # a whole noise chunk: the stream then writes straight into the batch
    subset: str = "full"
    max_images: int | None = None
    shard: tuple[int, int] = (0, 1)
    seed: int = 0
    device: str = "auto"
    results: Path = Path("results")
    data_dir: Path | None = None
    models_dir: Path | None = None
    model: str | Sequence[str] | None = None  # NAME (the classifier) or ROLE=NAME, repeatable
    arch: str | None = None
    image_size: int | None = None
    registry: Path | None = None
    extra_registries: tuple[Path, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    # Predictions per image (N x m); sets N = budget // m for the method's m. Excludes --n.
    budget: int | None = None
    procedure: str | None = None  # None: the method's own (Method.PROCEDURE, else cohen)


@dataclass
class RunResult:
    run_id: str
    folder: Path
    summary: RunSummary
    new_images: int


@dataclass
class Prepared:
    """A validated run: its card, procedure, images and device; nothing certified yet."""

    opts: RunOptions
    card: RunCard
    procedure: Procedure
    dataset: datasets.CertDataset
    indices: list[int]
    device: torch.device


def check_protocol(opts: RunOptions) -> None:
    """The run's scalar options (sizes are checked by :mod:`bench.budget`)."""
    if opts.sigma is not None:
        check_sigma(opts.sigma)
    budget.check_request(opts.n0, opts.n, opts.budget)
    if not 0 < opts.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {opts.alpha:g}")
    if opts.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {opts.batch}")
    if opts.max_images is not None and opts.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {opts.max_images}")
    if opts.seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {opts.seed}")
    i, k = opts.shard
    if not (k >= 1 and 0 <= i < k):
        raise ConfigError(f"--shard must be I/K with 0 <= I < K, got {i}/{k}")
    if opts.procedure is not None:
        procedures.get(opts.procedure)


def prepare(opts: RunOptions) -> Prepared:
    """Validate the request and load everything; no certification yet."""
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=datasets.DATASET_NAMES)
    entry = registry.method(opts.method)
    datasets.check_subset(opts.dataset, opts.subset)
    check_protocol(opts)
    device = resolve_device(opts.device)
    method = entry.instantiate(opts.dataset, opts.params)
    name = opts.procedure or getattr(method, "PROCEDURE", procedures.DEFAULT)
    sigma = procedures.get(name).run_sigma(method, opts.sigma)
    opts = replace(opts, procedure=name, sigma=sigma)  # resolved: the card records these
    ds = datasets.load_split(opts.dataset, "test", data_dir=opts.data_dir,
                             image_size=opts.image_size)
    indices = datasets.resolve_subset(opts.dataset, opts.subset, len(ds))
    models = RoleResolver(registry, opts.method, entry.model_roles(opts.dataset), info=ds.info,
                          sigma=opts.sigma, device=device, base_dir=models_dir(opts.models_dir),
                          overrides=parse_overrides(opts.model), arch=opts.arch)
    ctx = Context(dataset=ds.info, sigma=opts.sigma, device=device, seed=opts.seed,
                  models=models)
    spec = ProcedureSpec(name=opts.procedure, dataset=opts.dataset, method=opts.method,
                         n0=opts.n0, n=opts.n, budget=opts.budget, alpha=opts.alpha,
                         sigma=opts.sigma, seed=opts.seed, batch=opts.batch)
    procedure = procedures.build(spec, method, ctx)
    card = run_card(opts, entry, method.params, procedure, models, ds, indices, device)
    return Prepared(opts=opts, card=card, procedure=procedure, dataset=ds, indices=indices,
                    device=device)


def noise_identity(shape, device: torch.device | str) -> dict[str, Any]:
    """The ``noise`` block of a run's identity: chunk size, scheme and generator device type.

    torch's CPU and CUDA generators give different streams from the same seed, so the device
    type is part of what a certificate's noise is. The CPU generator is protocol 1's implicit
    one: its key is left out, so every run id written before the key existed stays valid; any
    other device type (``"generator": "cuda"``, ...) is recorded, and a run resumed on another
    device type is another run.
    """
    block: dict[str, Any] = {"chunk": chunk_size(shape), "scheme": NOISE_SCHEME}
    kind = torch.device(device).type
    if kind != "cpu":
        block["generator"] = kind
    return block


def run_card(opts: RunOptions, entry: MethodEntry, params: Mapping[str, Any],
             procedure: Procedure, models: RoleResolver, ds: datasets.CertDataset,
             indices: list[int], device: torch.device) -> RunCard:
    """The protocol card: the identity (hashed into the run id) and what describes the run.

    The default procedure is left out of the identity, so run ids of stores written before
    procedures existed stay valid; any other procedure is part of it. Likewise the noise
    generator's device type is recorded only when it is not the CPU (:func:`noise_identity`).
    """
    b = procedure.budget
    identity = {
        "protocol": PROTOCOL_VERSION,
        "method": opts.method,
        "adapter": entry.adapter,
        "params": _jsonable(params),
        "models": models.hashes(),
        "dataset": opts.dataset,
        "data_fingerprint": ds.fingerprint,
        "subset": opts.subset,
        "subset_size": len(indices),
        "subset_hash": datasets.subset_hash(indices),
        "sigma": opts.sigma,
        "n0": b.n0,
        "n": b.n,
        "m": b.m,
        "alpha": opts.alpha,
        "seed": opts.seed,
        "noise": noise_identity(ds.info.shape, device),
    }
    if procedure.name != procedures.DEFAULT:
        identity["procedure"] = procedure.name
    extra: dict[str, Any] = {
        "budget": b.card(),
        "cost_per_sample": {"classifier_passes": procedure.cost.classifier_passes,
                            "diffusion_passes": procedure.cost.diffusion_passes},
        "radius_grid": list(datasets.radius_grid(opts.dataset)),
        "paper": dict(entry.paper),
        "environment": environment(device),
        "procedure": procedure.card(),
        "model_roles": models.roles(),
    }
    described = procedure.describe()
    if described:  # e.g. a denoiser's timestep, DiffSmooth's sigma/sigma' pairing
        extra["base_classifier"] = _jsonable(described)
    return RunCard(identity=identity, extra=extra)


def run(opts: RunOptions) -> RunResult:
    """Certify the requested images (skipping finished ones) and export the run's files."""
    prep = prepare(opts)
    store = Store(opts.results)
    try:
        run_id = store.open_run(prep.card)
        todo = select_todo(prep, store.done_indices(run_id))
        if todo:
            warn_if_expensive(prep, todo)
        executor = SerialExecutor(prep.procedure, prep.dataset, prep.device)
        samples = prep.procedure.budget.n0 + prep.procedure.budget.n
        bar = tqdm(executor.certify(todo), total=len(todo), unit="img",
                   desc=f"{opts.method}/{opts.dataset} sigma={prep.opts.sigma:g}",
                   disable=not opts.progress, dynamic_ncols=True)
        for cert in bar:
            store.add_cert(run_id, cert)
            bar.set_postfix(samples_per_s=f"{samples / max(cert.seconds, 1e-9):,.0f}")
        folder, summary = store.export(run_id, prep.indices)
        return RunResult(run_id=run_id, folder=folder, summary=summary, new_images=len(todo))
    finally:
        store.close()


def warn_if_expensive(prep: Prepared, todo: list[int]) -> None:
    """Honest feasibility: time a few noisy samples of the first image to do and say, on
    stderr, what the run will cost when that exceeds ``WARN_TOTAL_S`` in all or
    ``WARN_IMAGE_S`` per image (a noised diffusion classifier at the paper's N needs hours per
    image on a CPU). The estimate assumes every stage of a cascade is visited (its worst
    case). The timing draws its own noise, so no certificate changes."""
    from bench import feasibility

    x, _ = prep.dataset[todo[0]]
    x = x.to(prep.device)

    def over(samples: int, min_seconds: float) -> str | None:
        est = feasibility.estimate(prep.procedure, x, len(todo), samples=samples,
                                   min_seconds=min_seconds, max_samples=prep.opts.batch)
        return feasibility.warning(est, WARN_TOTAL_S, per_image_threshold_s=WARN_IMAGE_S)

    # A crude look first (4 samples: cheap, but per-call overhead inflates it), then, only if
    # that crosses a threshold, batches large enough for the per-sample cost to dominate.
    line = over(4, 0.0) and over(16, 1.0)
    if line:
        tqdm.write(line, file=sys.stderr)


def select_todo(prep: Prepared, done: set[int]) -> list[int]:
    """This shard's images of the subset, minus finished ones, capped by --max-images."""
    i, k = prep.opts.shard
    mine = [idx for pos, idx in enumerate(prep.indices) if pos % k == i]
    if prep.opts.max_images is not None:
        mine = mine[: prep.opts.max_images]
    return [idx for idx in mine if idx not in done]


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True))
    except TypeError as exc:
        raise ConfigError(f"method params must be plain values ({exc})") from None
