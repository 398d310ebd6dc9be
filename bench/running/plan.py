"""Plan a run: check the request, load what it needs, and write its card; nothing certified.

Everything that can be wrong with a request (method, dataset, subset, sizes, registry, params,
models, a --batch too large for the device's memory) is checked by :func:`prepare` before the
first noisy sample, and the run's card (:func:`run_card`: the identity hashed into the run id,
and what describes the run) is written here only. The runner (:mod:`bench.running.runner`)
certifies a prepared run; each Ray worker (:mod:`bench.running.ray_executor`) prepares the
same run from the driver's resolved options and dataset spec. The dataset's name is looked up
once (:func:`dataset_spec`); its :class:`bench.data.specs.DatasetSpec` is what travels down.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench.certify import budget, procedures, records
from bench.certify.noise import noise_identity
from bench.certify.procedures import Procedure, ProcedureSpec
from bench.certify.procedures.sequential import RULES as SEQUENTIAL_RULES
from bench.certify.records import IDENTITY_VERSION, RunCard
from bench.certify.smoothing import checked_output
from bench.contract import Context
from bench.data import loaders, specs
from bench.data.layout import standard_layout
from bench.errors import CertbenchError, ConfigError
from bench.nets.memory_format import CHANNELS_LAST, CONTIGUOUS, MEMORY_FORMATS
from bench.params import check_sigma
from bench.registry.download import models_dir
from bench.registry.entries import MethodEntry, load_registry
from bench.running import flops
from bench.running.devices import environment, resolve_device
from bench.running.memory import fit_batch, is_out_of_memory
from bench.running.roles import ModelChoice, RoleResolver, parse_overrides

CERTIFICATIONS = ("fixed", "sequential")  # --certification (first name: --protocol)
SEQUENTIAL_IDENTITY = ("checkpoints", "checkpoint_alphas", "alpha_f", "grid", "label_aware")
# Only a rule other than gs-cp adds these (so gs-cp runs keep the ids they always had)
SEQUENTIAL_RULE_IDENTITY = ("rule", "futility_power")
PROBE_BATCH = 2  # the model probe's batch: an answer of one row per batch shows


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
    # Forward FLOPs per image: sets the N with (N0 + N) x FLOPs per prediction <= F
    # (bench.certify.budget.n_for_flops; every stage of a cascade). Excludes --n and --budget.
    budget_flops: int | None = None
    procedure: str | None = None  # None: the method's own (Method.PROCEDURE, else cohen)
    # fixed: the method's procedure at a fixed N (what leaderboards rank); sequential:
    # group-sequential bounds over the radius grid, stopping once the answer is determined
    certification: str = "fixed"
    label_aware: bool = False  # sequential: stop after selection when the class is wrong
    # sequential: gs-cp (version 1: the spec's six looks) or fine-cp (looks every x1.1 up to N,
    # conditional-power futility)
    sequential_rule: str = "gs-cp"
    # The reporting grid: radii, "auto" (0 up to the run's maximum certifiable radius) or None
    # (the dataset's grid). Recorded in the card's extra, never part of the run id.
    radii: tuple[float, ...] | str | None = None
    # Who certifies (never changes a certificate, nor the run id): "serial" (this process) or
    # "ray" (Ray actors, one per device: bench.running.ray_executor); address: an existing Ray
    # cluster (default: a local one for the run); workers: actors (default: one per GPU, or 2 on
    # CPU).
    executor: str = "serial"
    address: str | None = None
    workers: int | None = None
    # role -> an in-memory model (an nn.Module returning logits, or a callable returning
    # labels; bench.evaluate): used before --model and the registry, recorded in the card as
    # python:<Name> with the sha256 of its parameters and buffers (part of the run id)
    python_models: Mapping[str, Any] = field(default_factory=dict)
    # The networks' memory format (bench.nets.memory_format): contiguous (NCHW, the default),
    # channels_last (only networks known to accept it; part of the run id) or auto (channels-
    # last where every network of the run accepts it); prepare() resolves auto
    memory_format: str = CONTIGUOUS


@dataclass
class Prepared:
    """A validated run: its card, procedure, images and device; nothing certified yet."""

    opts: RunOptions
    card: RunCard
    procedure: Procedure
    dataset: loaders.CertDataset
    indices: list[int]
    device: torch.device
    data: specs.DatasetSpec  # the spec of opts.dataset, resolved once (Ray ships it to workers)
    # Measured FLOPs not yet written to <results>/flops-cache.json (the runner saves them)
    flop_cache: flops.FlopCache | None = None


def check_options(opts: RunOptions) -> None:
    """The run's scalar options (sizes are checked by :mod:`bench.certify.budget`)."""
    if opts.sigma is not None:
        check_sigma(opts.sigma)
    budget.check_request(opts.n0, opts.n, opts.budget)
    budget.check_flops_request(opts.n, opts.budget, opts.budget_flops)
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
        specs.check_radii(opts.radii)
    if opts.certification not in CERTIFICATIONS:
        raise ConfigError(f"unknown --certification {opts.certification!r}; valid: "
                          f"{', '.join(CERTIFICATIONS)}")
    if opts.certification == "sequential" and opts.radii == specs.AUTO_RADII:
        raise ConfigError("--certification sequential stops at the levels of a fixed grid; pass "
                          "--radii R1,R2,... or leave the dataset's grid")
    if opts.label_aware and opts.certification != "sequential":
        raise ConfigError("--label-aware applies to --certification sequential only")
    if opts.sequential_rule not in SEQUENTIAL_RULES:
        raise ConfigError(f"unknown --sequential-rule {opts.sequential_rule!r}; valid: "
                          f"{', '.join(SEQUENTIAL_RULES)}")
    if opts.sequential_rule != "gs-cp" and opts.certification != "sequential":
        raise ConfigError("--sequential-rule applies to --certification sequential only")
    if opts.memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"unknown --memory-format {opts.memory_format!r}; use "
                          f"{', '.join(MEMORY_FORMATS)}")


def procedure_name(opts: RunOptions, method) -> str:
    """The procedure of the run: --procedure, the method's own, or ``sequential`` for
    ``--certification sequential`` (which replaces Cohen's fixed N, never another procedure)."""
    name = opts.procedure or getattr(method, "PROCEDURE", procedures.DEFAULT)
    if opts.certification != "sequential":
        return name
    if name not in (procedures.DEFAULT, "sequential"):
        raise ConfigError(f"--certification sequential replaces Cohen's fixed-N CERTIFY; method "
                          f"{opts.method!r} is certified with the {name} procedure")
    return "sequential"


def prepare(opts: RunOptions, data: specs.DatasetSpec | None = None) -> Prepared:
    """Validate the request and load everything; no certification yet.

    ``data`` is the spec of ``opts.dataset`` when the caller has resolved it (a Ray worker gets
    the driver's, so a dataset registered only in the driver resolves); else it is looked up
    here, once, and passed down as an object."""
    if opts.budget_flops is not None:
        return prepare_budgets(opts, [opts.budget_flops], flops_unit=True, data=data)[0]
    return prepare_budgets(opts, [opts.budget], data=data)[0]


def prepare_budgets(opts: RunOptions, budgets: Sequence[int | None], *,
                    flops_unit: bool = False,
                    data: specs.DatasetSpec | None = None) -> list[Prepared]:
    """:func:`prepare` of ``opts`` at each budget of ``budgets``, ascending: predictions per
    image (``--budget``; None: ``opts.n`` or the dataset's N) or, with ``flops_unit``, FLOPs
    per image (``--budget-flops``). The data and models are loaded and the FLOPs measured
    once; each Prepared is the one ``prepare`` gives at that budget (same card, same run id),
    for a budget sweep (:mod:`bench.running.sweep`). The batch is fitted to memory once, on
    the last (largest) budget."""
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=_known_datasets(data))
    entry = registry.method(opts.method)
    data = dataset_spec(opts.dataset, data)
    data.check_subset(opts.subset)
    check_options(opts)
    if not budgets:
        raise ConfigError("no budget to prepare a run at")
    for size in budgets:
        if flops_unit:
            budget.check_flops_request(opts.n, opts.budget, size)
        else:
            budget.check_request(opts.n0, opts.n, size)
    device = resolve_device(opts.device)
    method = entry.instantiate(opts.dataset, opts.params)
    name = procedure_name(opts, method)
    sigma = procedures.get(name).run_sigma(method, opts.sigma)
    opts = replace(opts, procedure=name, sigma=sigma)  # resolved: the card records these
    choice = ModelChoice(registry, opts.method, entry.model_roles(opts.dataset),
                         dataset=opts.dataset, sigma=opts.sigma,
                         overrides=parse_overrides(opts.model), arch=opts.arch,
                         python_models=opts.python_models)
    ds = loaders.load_split(data, "test", data_dir=opts.data_dir,
                            image_size=opts.image_size, allow_resize=opts.allow_resize,
                            model=choice.facts() if loaders.reads_tree(data) else None)
    # a class-folder tree is read to fit the model: the resolver is built with the data's info
    models = RoleResolver.for_data(choice, ds.info, device=device,
                                   base_dir=models_dir(opts.models_dir))
    indices = data.subset_indices(opts.subset, len(ds))
    grid_data = default_grid_dataset(data, choice)
    ctx = Context(dataset=ds.info, sigma=opts.sigma, device=device, seed=opts.seed,
                  models=models)
    spec = ProcedureSpec(name=opts.procedure, dataset=data, method=opts.method,
                         n0=opts.n0, n=opts.n, budget=None if flops_unit else budgets[0],
                         alpha=opts.alpha,
                         sigma=opts.sigma, seed=opts.seed, batch=opts.batch,
                         radii=_procedure_radii(opts, data, grid_data),
                         label_aware=opts.label_aware,
                         sequential_rule=opts.sequential_rule)
    procedure = procedures.build(spec, method, ctx)
    models.check_overrides_used()  # the method has asked for its models: a mistyped role shows
    # every network loaded: the layout they run in (auto resolved), before the probe runs them
    opts = replace(opts, memory_format=models.apply_memory_format(opts.memory_format))
    check_model_fits(procedure, ds, indices, device, model_names(models))
    cache = flops.FlopCache(Path(opts.results) / flops.CACHE_NAME)
    key = {"models": models.hashes(), "method": opts.method, "adapter": entry.adapter,
           "params": _jsonable(method.params), "sigma": opts.sigma}
    compute = flops.measure(procedure, models.modules(), key, tuple(ds.info.shape),
                            ds.info.num_classes, device, cache)
    out = [_sized(opts, spec, size, flops_unit, procedure if i == 0 else None, method, ctx,
                  compute) for i, size in enumerate(budgets)]
    # The batch is fitted once, to the largest N (a sweep certifies with that procedure alone);
    # it never changes a certificate, nor the card.
    batch = fit_batch(out[-1][2], ds.info.shape, opts.batch, device)
    prepared = []
    for sized_opts, sized_spec, proc in out:
        if batch != opts.batch:
            sized_opts = replace(sized_opts, batch=batch)
            proc = procedures.build(replace(sized_spec, batch=batch), method, ctx)
        if sized_opts.budget_flops is not None:  # recorded: N came from F, not from a budget
            proc.budget = replace(proc.budget, requested=None,
                                  requested_flops=sized_opts.budget_flops)
        card = run_card(sized_opts, entry, method.params, proc, models, ds, indices, device,
                        grid_data=grid_data, compute=compute)
        prepared.append(Prepared(opts=sized_opts, card=card, procedure=proc, dataset=ds,
                                 indices=indices, device=device, data=data,
                                 flop_cache=cache))
    return prepared


def _sized(opts: RunOptions, spec: ProcedureSpec, size: int | None, flops_unit: bool,
           built: Procedure | None, method, ctx: Context, compute: Mapping[str, Any]
           ) -> tuple[RunOptions, ProcedureSpec, Procedure]:
    """The options, spec and procedure of one budget of :func:`prepare_budgets`: ``size``
    predictions per image (N = size // m), or with ``flops_unit`` FLOPs per image (N sized by
    :func:`flops_spec`). ``built`` is the procedure already built for ``spec``, if any."""
    if flops_unit:
        opts = replace(opts, budget=None, budget_flops=size)
        spec = replace(spec, budget=None)
    else:
        opts = replace(opts, budget=size)
        spec = replace(spec, budget=size)
    procedure = built or procedures.build(spec, method, ctx)
    if opts.budget_flops is not None:  # N sized to the FLOPs: the procedure is built again
        spec = flops_spec(spec, procedure, compute, opts.budget_flops)
        procedure = procedures.build(spec, method, ctx)
    return opts, spec, procedure


def flops_spec(spec: ProcedureSpec, procedure: Procedure, compute: Mapping[str, Any],
               flops_budget: int) -> ProcedureSpec:
    """``spec`` with the N that spends at most ``flops_budget`` FLOPs per image
    (:func:`bench.certify.budget.n_for_flops`): N per stage for Cohen's and the cascade; the
    last checkpoint for the sequential procedure (given as the budget N x m it sizes from)."""
    b = procedure.budget
    per_sample = budget.flops_per_sample(compute, b.stages)
    n = budget.n_for_flops(flops_budget, b.n0, per_sample, spec.method, b.stages)
    if procedure.name == "sequential":
        if n * b.m > budget.MAX_N:
            raise ConfigError(f"--budget-flops {flops_budget:,} buys {n:,} x m = {b.m} "
                              f"predictions per image, more than {budget.MAX_N:,}; use a "
                              "smaller budget")
        return replace(spec, n=None, budget=n * b.m)
    return replace(spec, n=n, budget=None)


def dataset_spec(name: str, data: specs.DatasetSpec | None = None) -> specs.DatasetSpec:
    """The run's dataset spec: ``data`` when given (it must be the spec of ``name``), else
    ``name`` looked up (an unknown name: one line with the valid ones)."""
    if data is None:
        return specs.spec(name)
    if data.name != name:
        raise ConfigError(f"the dataset spec given is {data.name!r}, the run's dataset {name!r}")
    return data


def _known_datasets(data: specs.DatasetSpec | None) -> tuple[str, ...]:
    """The dataset names a registry may use: the registered ones and the run's own."""
    names = loaders.DATASET_NAMES
    return names if data is None or data.name in names else (*names, data.name)


def model_names(models: RoleResolver) -> str:
    """The models a run loaded, for messages: ``model NAME`` or ``models ROLE NAME, ...``."""
    roles = models.roles()
    if not roles:  # e.g. the dummy method: no network
        return f"method {models.method}'s base classifier"
    if len(roles) == 1:
        return f"model {next(iter(roles.values()))['name']}"
    return "models " + ", ".join(f"{role} {ref['name']}" for role, ref in roles.items())


def check_model_fits(procedure: Procedure, ds: loaders.CertDataset, indices: list[int],
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
    except CertbenchError as exc:  # e.g. a wrong answer (bench.contract.LogitClassifier)
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


def _refused_input(models: str, ds: loaders.CertDataset, shape: tuple[int, ...],
                   exc: Exception) -> str:
    c, h, w = ds.info.shape
    fix = ("set the model entry's channels / image_size or pass --image-size"
           if isinstance(ds, loaders.TreeDataset) else
           f"check that its architecture takes {ds.info.name} images ({c}x{h}x{w})")
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return (f"{models} does not accept the images as read (input {shape}: {c} channels, "
            f"{h}x{w}): {type(exc).__name__}: {first}; {fix}")


def run_card(opts: RunOptions, entry: MethodEntry, params: Mapping[str, Any],
             procedure: Procedure, models: RoleResolver, ds: loaders.CertDataset,
             indices: list[int], device: torch.device, *,
             grid_data: specs.DatasetSpec,
             compute: Mapping[str, Any] | None = None) -> RunCard:
    """The run card: the identity (hashed into the run id) and what describes the run.

    The default procedure is left out of the identity, so run ids of stores written before
    procedures existed stay valid; any other procedure is part of it. Likewise the noise
    generator's device type is recorded only when it is not the CPU (:func:`noise_identity`),
    and the networks' memory format only when it is channels-last (the last bit of a logit may
    differ between layouts, so an exact near-tie could flip a label). ``compute`` (the forward
    FLOPs per prediction, :mod:`bench.running.flops`) is descriptive: never part of the
    identity.
    """
    b = procedure.budget
    identity = {
        "protocol": IDENTITY_VERSION,
        "method": opts.method,
        "adapter": entry.adapter,
        "params": _jsonable(params),
        "models": models.hashes(),
        "dataset": opts.dataset,
        "data_fingerprint": ds.fingerprint,
        "subset": opts.subset,
        "subset_size": len(indices),
        "subset_hash": loaders.subset_hash(indices),
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
    if opts.memory_format == CHANNELS_LAST:
        identity["memory_format"] = CHANNELS_LAST
    if procedure.name == "sequential":  # its looks, alphas and grid decide when it stops
        rule = procedure.card()
        identity["sequential"] = {k: rule[k] for k in SEQUENTIAL_IDENTITY}
        if rule["rule"] != "gs-cp":
            identity["sequential"].update({k: rule[k] for k in SEQUENTIAL_RULE_IDENTITY})
    extra: dict[str, Any] = {
        "budget": b.card(),
        "cost_per_sample": {"classifier_passes": procedure.cost.classifier_passes,
                            "diffusion_passes": procedure.cost.diffusion_passes},
        **radius_grid_fields(opts, procedure, grid_data),
        "paper": dict(entry.paper),
        "environment": environment(device),
        "executor": opts.executor,  # who certified: never part of the identity
        "procedure": procedure.card(),
        "model_roles": models.roles(),
    }
    if compute is not None:
        extra["compute"] = dict(compute)
    describe_data = getattr(ds, "describe", None)
    if callable(describe_data):  # a class-folder tree: the folder, labels, size fed
        extra["data"] = describe_data()
    described = procedure.describe()
    if described:  # e.g. a denoiser's timestep, DiffSmooth's sigma/sigma' pairing
        extra["base_classifier"] = _jsonable(described)
    return RunCard(identity=identity, extra=extra)


def default_grid_dataset(data: specs.DatasetSpec, models: ModelChoice) -> specs.DatasetSpec:
    """The dataset whose radius grid a run reports without --radii: its own, except that a
    class-folder tree borrows the grid of the dataset its classifier was trained on (a CIFAR-10
    model on 32 px images is not reported on ImageNet's 0.5-3.0)."""
    if not loaders.reads_tree(data):
        return data
    facts = models.facts()
    own = loaders.DATASETS.get(facts.dataset) if facts is not None and facts.dataset else None
    if own is not None and not loaders.reads_tree(own):
        return own
    return data


def _procedure_radii(opts: RunOptions, data: specs.DatasetSpec,
                     grid_data: specs.DatasetSpec) -> tuple[float, ...]:
    """The grid a procedure is built with: --radii, a borrowed dataset grid, or () for the
    run's own dataset grid (so the identity of existing sequential runs is unchanged)."""
    if isinstance(opts.radii, tuple):
        return tuple(opts.radii)
    if opts.radii is None and grid_data.name != data.name:
        return tuple(grid_data.radii)
    return ()


def radius_grid_fields(opts: RunOptions, procedure: Procedure,
                       grid_data: specs.DatasetSpec) -> dict[str, Any]:
    """The card's ``radius_grid`` (and ``radius_grid_source`` when it is not the dataset's):
    the dataset's grid (a class-folder tree: that of its model's dataset), ``--radii`` as
    given, or ``auto``: 0 up to the run's maximum certifiable radius (a procedure's own bound
    where it declares one, else Cohen's)."""
    if opts.radii is None:
        fields: dict[str, Any] = {"radius_grid": list(grid_data.radii)}
        if grid_data.name != opts.dataset:
            fields["radius_grid_source"] = f"{grid_data.name} (the model's dataset)"
        return fields
    radii = specs.check_radii(opts.radii)
    if radii == specs.AUTO_RADII:
        top = records.max_certifiable_radius(procedure.card(), opts.sigma, procedure.budget.n,
                                             opts.alpha)
        return {"radius_grid": list(specs.auto_grid(top)),
                "radius_grid_source": "auto"}
    return {"radius_grid": list(radii), "radius_grid_source": "--radii"}


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True))
    except TypeError as exc:
        raise ConfigError(f"method params must be plain values ({exc})") from None
