"""Certify a dataset subset with one method: plan, resume, certify, record, export.

Everything that can be wrong with a request (method, dataset, subset, sizes, registry, params,
models, a --batch too large for the device's memory) is checked by :func:`prepare` before the
first noisy sample. :func:`run` then hands the images still to do to an executor and commits
each certificate to the store as it arrives; the run id is the hash of the card's identity, so
the same command resumes.

The run row is stored with the run's first certificate (one transaction): a run whose first
image fails (a corrupt image, a model error, memory running out) leaves no run behind, and the
store is as it was. Processes running the same command at once share the images: each claims
a few images at a time (:class:`bench.store.ClaimSession`), so every image is certified once,
and each waits for the images others hold before it exports, so every export is complete.

Memory: ``--batch`` noisy copies of an image go through the base classifier at once. Before the
run, :func:`fit_batch` estimates what a batch needs (``MEMORY_FACTOR`` x 4 bytes per image
float and prediction per sample, for the noise buffer and the classifier's activations) and,
when that exceeds ``MEMORY_SHARE`` of the memory available (CUDA: free device memory; else
the host's available memory, capped by the address-space limit), lowers the batch and says so
on stderr: the batch size never changes a certificate. An allocation that fails anyway (the
estimate is rough) stops the run with one line asking for a smaller ``--batch``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench import budget, datasets, dataspecs, procedures, stats
from bench.devices import environment, resolve_device
from bench.errors import CertbenchError, ConfigError
from bench.executors import make_executor, polled_indices
from bench.models import RoleResolver, models_dir, parse_overrides
from bench.params import check_sigma
from bench.procedures import Procedure, ProcedureSpec
from bench.protocol import Context, standard_layout
from bench.records import PROTOCOL_VERSION, RunCard, RunSummary
from bench.registry import MethodEntry, load_registry
from bench.smoothing import checked_output, chunk_size
from bench.store import ClaimSession, Store

PROTOCOLS = ("fixed", "sequential")
SEQUENTIAL_IDENTITY = ("checkpoints", "checkpoint_alphas", "alpha_f", "grid", "label_aware")
WARN_TOTAL_S, WARN_IMAGE_S = 3600.0, 300.0  # warn before a run estimated to take longer
NOISE_SCHEME = ("torch.randn in whole chunks from a generator seeded by SeedSequence([seed, "
                "idx, phase]); phases select=0 estimate=1")
MEMORY_FACTOR = 64  # floats per image float of a noisy sample: buffer + classifier activations
MEMORY_SHARE = 0.5  # of the available memory a batch may use
CLAIM_SECONDS = 2.0  # claim about this much work at a time (at least one image, at most 64)
CLAIM_MAX = 64
PROBE_BATCH = 2  # the model probe's batch: an answer of one row per batch shows
WAIT_POLL_S = 0.5  # how often a process with nothing left to claim looks at others' images


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
    allow_resize: bool = False  # a class-folder tree resized by more than 2x is refused without
    registry: Path | None = None
    extra_registries: tuple[Path, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    # Predictions per image (N x m); sets N = budget // m for the method's m. Excludes --n.
    budget: int | None = None
    procedure: str | None = None  # None: the method's own (Method.PROCEDURE, else cohen)
    # fixed: the method's procedure at a fixed N (the leaderboards' protocol); sequential:
    # group-sequential bounds over the radius grid, stopping once the answer is determined
    protocol: str = "fixed"
    label_aware: bool = False  # sequential: stop after selection when the class is wrong
    # The reporting grid: radii, "auto" (0 up to the run's maximum certifiable radius) or None
    # (the dataset's grid). Recorded in the card's extra, never part of the run id.
    radii: tuple[float, ...] | str | None = None
    # Who certifies (never changes a certificate, nor the run id): "serial" (this process) or
    # "ray" (Ray actors, one per device: bench.distributed); address: an existing Ray cluster
    # (default: a local one for the run); workers: actors (default: one per GPU, or 2 on CPU).
    executor: str = "serial"
    address: str | None = None
    workers: int | None = None
    # role -> an in-memory model (an nn.Module returning logits, or a callable returning
    # labels; bench.evaluate): used before --model and the registry, recorded in the card as
    # python:<Name> with the sha256 of its parameters and buffers (part of the run id)
    python_models: Mapping[str, Any] = field(default_factory=dict)


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
    if opts.radii is not None:
        dataspecs.check_radii(opts.radii)
    if opts.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol {opts.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if opts.protocol == "sequential" and opts.radii == dataspecs.AUTO_RADII:
        raise ConfigError("--protocol sequential stops at the levels of a fixed grid; pass "
                          "--radii R1,R2,... or leave the dataset's grid")
    if opts.label_aware and opts.protocol != "sequential":
        raise ConfigError("--label-aware applies to --protocol sequential only")


def procedure_name(opts: RunOptions, method) -> str:
    """The procedure of the run: --procedure, the method's own, or ``sequential`` for
    ``--protocol sequential`` (which replaces Cohen's fixed N, never another procedure)."""
    name = opts.procedure or getattr(method, "PROCEDURE", procedures.DEFAULT)
    if opts.protocol != "sequential":
        return name
    if name not in (procedures.DEFAULT, "sequential"):
        raise ConfigError(f"--protocol sequential replaces Cohen's fixed-N CERTIFY; method "
                          f"{opts.method!r} is certified with the {name} procedure")
    return "sequential"


def prepare(opts: RunOptions) -> Prepared:
    """Validate the request and load everything; no certification yet."""
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=datasets.DATASET_NAMES)
    entry = registry.method(opts.method)
    datasets.check_subset(opts.dataset, opts.subset)
    check_protocol(opts)
    device = resolve_device(opts.device)
    method = entry.instantiate(opts.dataset, opts.params)
    name = procedure_name(opts, method)
    sigma = procedures.get(name).run_sigma(method, opts.sigma)
    opts = replace(opts, procedure=name, sigma=sigma)  # resolved: the card records these
    models = RoleResolver(registry, opts.method, entry.model_roles(opts.dataset),
                          info=datasets.placeholder_info(opts.dataset), sigma=opts.sigma,
                          device=device, base_dir=models_dir(opts.models_dir),
                          overrides=parse_overrides(opts.model), arch=opts.arch,
                          python_models=opts.python_models)
    ds = datasets.load_split(opts.dataset, "test", data_dir=opts.data_dir,
                             image_size=opts.image_size, allow_resize=opts.allow_resize,
                             model=models.facts() if datasets.reads_tree(opts.dataset) else None)
    models.info = ds.info  # a class-folder tree is read to fit the model: now its info is known
    indices = datasets.resolve_subset(opts.dataset, opts.subset, len(ds))
    grid_dataset = default_grid_dataset(opts, models)
    ctx = Context(dataset=ds.info, sigma=opts.sigma, device=device, seed=opts.seed,
                  models=models)
    spec = ProcedureSpec(name=opts.procedure, dataset=opts.dataset, method=opts.method,
                         n0=opts.n0, n=opts.n, budget=opts.budget, alpha=opts.alpha,
                         sigma=opts.sigma, seed=opts.seed, batch=opts.batch,
                         radii=_procedure_radii(opts, grid_dataset),
                         label_aware=opts.label_aware)
    procedure = procedures.build(spec, method, ctx)
    models.check_overrides_used()  # the method has asked for its models: a mistyped role shows
    check_model_fits(procedure, ds, indices, device, model_names(models))
    batch = fit_batch(procedure, ds.info.shape, opts.batch, device)
    if batch != opts.batch:  # the batch never changes a certificate, nor the card
        opts = replace(opts, batch=batch)
        procedure = procedures.build(replace(spec, batch=batch), method, ctx)
    card = run_card(opts, entry, method.params, procedure, models, ds, indices, device,
                    grid_dataset=grid_dataset)
    return Prepared(opts=opts, card=card, procedure=procedure, dataset=ds, indices=indices,
                    device=device)


def model_names(models: RoleResolver) -> str:
    """The models a run loaded, for messages: ``model NAME`` or ``models ROLE NAME, ...``."""
    roles = models.roles()
    if not roles:  # e.g. the dummy method: no network
        return f"method {models.method}'s base classifier"
    if len(roles) == 1:
        return f"model {next(iter(roles.values()))['name']}"
    return "models " + ", ".join(f"{role} {ref['name']}" for role, ref in roles.items())


def check_model_fits(procedure: Procedure, ds: datasets.CertDataset, indices: list[int],
                     device: torch.device, models: str = "the model") -> None:
    """One forward pass on ``PROBE_BATCH`` copies of the first image, before any noise: images
    the model cannot take (channels, size), any other error of the model, an answer of another
    batch size or type, or a class count other than the data's are one line naming
    ``models`` and the input shape, not a traceback an hour in."""
    base = getattr(procedure, "base", None)
    if base is None or not indices:
        return
    x, _ = ds[indices[0]]
    batch = standard_layout(x[None].expand(PROBE_BATCH, *x.shape)).to(device)
    begin = getattr(base, "begin_phase", None)
    if callable(begin):  # its own randomness restarts at every phase: this draw is never used
        begin(0, 0, procedures.base.PROBE_PHASE)
    try:
        with torch.inference_mode():
            out = base(batch)
    except CertbenchError as exc:  # e.g. a wrong answer (bench.protocol.LogitClassifier)
        if models in str(exc):
            raise
        raise type(exc)(f"{models}: {exc}") from None
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise ConfigError(_refused_input(models, ds, tuple(batch.shape), exc)) from None
    checked_output(out, PROBE_BATCH, who=f"the base classifier of {models}")
    if out.is_floating_point() and out.dim() == 2 and out.shape[-1] != ds.info.num_classes:
        classes_from = getattr(ds, "describe", dict)().get("classes_from", ds.info.name)
        raise ConfigError(
            f"{models} outputs {out.shape[-1]} classes but the images' labels index "
            f"{ds.info.num_classes} classes ({classes_from}); set the model "
            "entry's num_classes or classes to match")


def _refused_input(models: str, ds: datasets.CertDataset, shape: tuple[int, ...],
                   exc: Exception) -> str:
    c, h, w = ds.info.shape
    fix = ("set the model entry's channels / image_size or pass --image-size"
           if datasets.reads_tree(ds.info.name) else
           f"check that its architecture takes {ds.info.name} images ({c}x{h}x{w})")
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"{models} does not accept the images as read (input {shape}: {c} channels, "
            f"{h}x{w}): {type(exc).__name__}: {first}; {fix}")


def fit_batch(procedure: Procedure, shape, batch: int, device: torch.device,
              available: int | None = None) -> int:
    """``batch``, or the largest batch that fits in memory by the estimate (said on stderr).

    A batch never exceeds a phase's samples (N0 or N), so only ``min(batch, max(N0, N))``
    noisy copies (each with ``m`` predictions) are ever held at once. ``available`` defaults
    to :func:`available_memory`; where that is unknown, the batch is kept.
    """
    b = procedure.budget
    used = max(1, min(batch, max(b.n0, b.n)))
    per_sample = 4 * MEMORY_FACTOR * max(1, int(b.m)) * int(torch.Size(shape).numel())
    available = available_memory(device) if available is None else available
    if available is None or used * per_sample <= MEMORY_SHARE * available:
        return batch
    fits = int(MEMORY_SHARE * available // per_sample)
    if fits < 1:
        raise ConfigError(
            f"one noisy sample needs ~{_gb(per_sample)} of memory by certbench's estimate, more "
            f"than half of the {_gb(available)} available on {device}; free some memory or use "
            "another --device")
    chunk = chunk_size(shape)
    fits = fits - fits % chunk if fits >= chunk else fits  # whole noise chunks when possible
    tqdm.write(f"certbench: --batch {batch} would need ~{_gb(used * per_sample)} of memory, "
               f"{_gb(available)} is available on {device}: using --batch {fits} (the batch "
               "size never changes a certificate)", file=sys.stderr)
    return fits


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still allocate on ``device``, or None when unknown.

    CUDA: the device's free memory. Otherwise the host's available memory (Linux
    ``MemAvailable``, else the physical memory), capped by the process's address-space limit
    (``ulimit -v``) less what it already maps.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type not in ("cpu", "mps"):
        return None
    avail = _meminfo_available()
    if avail is None:
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            headroom = max(0, soft - mapped)
            avail = headroom if avail is None else min(avail, headroom)
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    return avail


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


_OOM = re.compile(r"out of memory|can't allocate memory|not enough memory|failed to allocate|"
                  r"cannot allocate memory", re.I)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of torch (CPU or CUDA) or of Python."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError",
                                                              None)
    if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM.search(str(exc)))


def _out_of_memory_error(prep: Prepared, exc: BaseException) -> ConfigError:
    tried = re.search(r"tried to allocate (\d+ bytes|[\d.]+ ?[KMGT]i?B)", str(exc), re.I)
    what = f"allocating {tried.group(1)} failed" if tried else "an allocation failed"
    return ConfigError(
        f"--batch {prep.opts.batch} does not fit in memory on {prep.device} ({what}); use a "
        "smaller --batch (the batch size never changes a certificate)")


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
             indices: list[int], device: torch.device, *,
             grid_dataset: str | None = None) -> RunCard:
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
    if procedure.name == "sequential":  # its looks, alphas and grid decide when it stops
        rule = procedure.card()
        identity["sequential"] = {k: rule[k] for k in SEQUENTIAL_IDENTITY}
    extra: dict[str, Any] = {
        "budget": b.card(),
        "cost_per_sample": {"classifier_passes": procedure.cost.classifier_passes,
                            "diffusion_passes": procedure.cost.diffusion_passes},
        **radius_grid_fields(opts, procedure, grid_dataset),
        "paper": dict(entry.paper),
        "environment": environment(device),
        "executor": opts.executor,  # who certified: never part of the identity
        "procedure": procedure.card(),
        "model_roles": models.roles(),
    }
    describe_data = getattr(ds, "describe", None)
    if callable(describe_data):  # a class-folder tree: the folder, labels, size fed
        extra["data"] = describe_data()
    described = procedure.describe()
    if described:  # e.g. a denoiser's timestep, DiffSmooth's sigma/sigma' pairing
        extra["base_classifier"] = _jsonable(described)
    return RunCard(identity=identity, extra=extra)


def default_grid_dataset(opts: RunOptions, models: RoleResolver) -> str:
    """The dataset whose radius grid a run reports without --radii: its own, except that a
    class-folder tree borrows the grid of the dataset its classifier was trained on (a CIFAR-10
    model on 32 px images is not reported on ImageNet's 0.5-3.0)."""
    if not datasets.reads_tree(opts.dataset):
        return opts.dataset
    facts = models.facts()
    own = facts.dataset if facts is not None else None
    if own in datasets.DATASET_NAMES and not datasets.reads_tree(own):
        return own
    return opts.dataset


def _procedure_radii(opts: RunOptions, grid_dataset: str) -> tuple[float, ...]:
    """The grid a procedure is built with: --radii, a borrowed dataset grid, or () for the
    run's own dataset grid (so the identity of existing sequential runs is unchanged)."""
    if isinstance(opts.radii, tuple):
        return tuple(opts.radii)
    if opts.radii is None and grid_dataset != opts.dataset:
        return tuple(datasets.radius_grid(grid_dataset))
    return ()


def radius_grid_fields(opts: RunOptions, procedure: Procedure,
                       grid_dataset: str | None = None) -> dict[str, Any]:
    """The card's ``radius_grid`` (and ``radius_grid_source`` when it is not the dataset's):
    the dataset's grid (a class-folder tree: that of its model's dataset), ``--radii`` as
    given, or ``auto``: 0 up to the run's maximum certifiable radius (a procedure's own bound
    where it declares one, else Cohen's)."""
    if opts.radii is None:
        grid_dataset = grid_dataset or opts.dataset
        fields: dict[str, Any] = {"radius_grid": list(datasets.radius_grid(grid_dataset))}
        if grid_dataset != opts.dataset:
            fields["radius_grid_source"] = f"{grid_dataset} (the model's dataset)"
        return fields
    radii = dataspecs.check_radii(opts.radii)
    if radii == dataspecs.AUTO_RADII:
        top = (procedure.card() or {}).get("max_certifiable_radius")
        if top is None:
            top = stats.max_radius(opts.sigma, procedure.budget.n, opts.alpha)
        return {"radius_grid": list(dataspecs.auto_grid(float(top))),
                "radius_grid_source": "auto"}
    return {"radius_grid": list(radii), "radius_grid_source": "--radii"}


def _regrid(store: Store, run_id: str, card: RunCard) -> None:
    """A resumed run asked for another grid (--radii): its stored card's grid becomes this one
    (descriptive, like the budget; the identity and the certificates are unchanged)."""
    stored = store.run_card(run_id)
    keys = ("radius_grid", "radius_grid_source")
    if all(stored.extra.get(k) == card.extra.get(k) for k in keys):
        return
    extra = {k: v for k, v in stored.extra.items() if k not in keys}
    extra.update({k: card.extra[k] for k in keys if k in card.extra})
    store.update_card(run_id, RunCard(identity=stored.identity, extra=extra))


class EmptyShard(Exception):
    """This shard holds none of the subset's images (more shards than images, e.g. a job array
    larger than the subset): a normal outcome, not an error. Nothing is certified and no run,
    store or export is written; the message says so."""


def run(opts: RunOptions) -> RunResult:
    """Certify the requested images (skipping finished ones, sharing them with other processes
    on the same run) and export the run's files. Raises :class:`EmptyShard` for a shard
    without images, before anything is written."""
    prep = prepare(opts)
    check_shard_has_images(prep)
    store = Store(opts.results)
    try:
        found = store.find_run(prep.card)
        run_id = found or prep.card.run_id
        # A new run's row is written with its first certificate: a run whose first image
        # fails leaves nothing behind.
        create = None if found else prep.card
        todo = select_todo(prep, store.done_indices(run_id))
        new = 0
        if todo:
            try:
                new = certify_shared(prep, store, run_id, todo, create=create)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise _out_of_memory_error(prep, exc) from None
                raise
        if create is not None:  # nothing to certify (an empty shard), or others did it all
            run_id = store.open_run(prep.card)
        if opts.radii is not None:
            _regrid(store, run_id, prep.card)
        folder, summary = store.export(run_id, prep.indices)
        return RunResult(run_id=run_id, folder=folder, summary=summary, new_images=new)
    finally:
        store.close()


def certify_shared(prep: Prepared, store: Store, run_id: str, todo: list[int], *,
                   create: RunCard | None = None) -> int:
    """Certify the images of ``todo`` that no other process certifies, claiming a few at a
    time; return how many this process certified. Returns once every image of ``todo`` is
    certified (waiting for images that other live processes hold)."""
    opts = prep.opts
    executor = make_executor(prep)  # refused here (e.g. Ray not installed) before any work
    warn_if_expensive(prep, todo)
    samples = prep.procedure.budget.n0 + prep.procedure.budget.n
    from bench.progress import progress  # a bar on a terminal, else periodic log lines

    bar = progress(total=len(todo), unit="img",
                   desc=f"{opts.method}/{opts.dataset} sigma={opts.sigma:g}",
                   disable=not opts.progress, dynamic_ncols=True)
    pace = _Pace()
    new = pulled = 0

    def left(count: int) -> None:  # images this process may still certify
        total = pulled + count  # those handed to the executor (done or in flight) + the rest
        if total != bar.total:
            bar.total = total
            bar.refresh()

    def waiting(count: int) -> None:
        if opts.progress:
            tqdm.write(f"certbench: waiting for {count} image(s) another process is "
                       "certifying", file=sys.stderr)

    try:
        with ClaimSession(store, run_id) as claims:
            # An executor with images in flight must not block on others' images
            # (bench.executors.polled_indices); the certificates' iterator is closed on any
            # exit, so the executor stops what it started (Ray workers, a local cluster).
            source = polled_indices if getattr(executor, "polls", False) else claimed_indices
            indices = source(claims, todo, pace.chunk, left=left, waiting=waiting)

            def counted() -> Iterator[int | None]:
                nonlocal pulled
                for idx in indices:
                    pulled += idx is not None
                    yield idx

            with contextlib.closing(executor.certify(counted())) as certs:
                for cert in certs:
                    store.add_cert(run_id, cert, card=create)
                    new += 1
                    pace.add(cert.seconds)
                    bar.update(1)
                    bar.set_postfix(samples_per_s=f"{samples / max(cert.seconds, 1e-9):,.0f}")
    finally:
        bar.close()
    return new


class _Pace:
    """How many images to claim at once: about ``CLAIM_SECONDS`` of work, from the images
    certified so far (one until the first is done)."""

    def __init__(self) -> None:
        self.images, self.seconds = 0, 0.0

    def add(self, seconds: float) -> None:
        self.images += 1
        self.seconds += max(seconds, 0.0)

    def chunk(self) -> int:
        if not self.images:
            return 1
        per_image = self.seconds / self.images
        return max(1, min(CLAIM_MAX, int(CLAIM_SECONDS / max(per_image, 1e-6))))


def claimed_indices(claims: ClaimSession, todo: Sequence[int], chunk: Callable[[], int], *,
                    left: Callable[[int], None] | None = None,
                    waiting: Callable[[int], None] | None = None,
                    poll_s: float = WAIT_POLL_S) -> Iterator[int]:
    """The images of ``todo`` this process is to certify, claimed ``chunk()`` at a time as
    they are asked for (the executor pulls the next one once the last is committed).

    Images certified meanwhile (by anyone) are skipped; images another live process holds
    are waited for, and taken over if it dies. Ends when every image of ``todo`` is done.
    """
    for idx in polled_indices(claims, todo, chunk, left=left, waiting=waiting):
        if idx is None:  # all that is left is held by others: look again in a while
            time.sleep(poll_s)
            continue
        yield idx


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


def shard_images(prep: Prepared) -> list[int]:
    """This shard's images of the subset: every K-th from position I."""
    i, k = prep.opts.shard
    return [idx for pos, idx in enumerate(prep.indices) if pos % k == i]


def check_shard_has_images(prep: Prepared) -> None:
    if shard_images(prep):
        return
    i, k = prep.opts.shard
    raise EmptyShard(f"shard {i}/{k} holds no images ({prep.opts.dataset} {prep.opts.subset} "
                     f"has {len(prep.indices)}, fewer than {k} shards): nothing to certify, no "
                     "run written")


def select_todo(prep: Prepared, done: set[int]) -> list[int]:
    """This shard's images of the subset, minus finished ones, capped by --max-images."""
    mine = shard_images(prep)
    if prep.opts.max_images is not None:
        mine = mine[: prep.opts.max_images]
    return [idx for idx in mine if idx not in done]


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True))
    except TypeError as exc:
        raise ConfigError(f"method params must be plain values ({exc})") from None
