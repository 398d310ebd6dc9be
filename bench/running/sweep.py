"""A budget sweep: one method certified at several budgets for the cost of the largest.

Cohen's fixed-N CERTIFY draws its N estimation samples from a prefix-stable stream (the i-th
sample of an image is a function of run seed, image and phase only; :mod:`bench.certify.noise`),
and its N0 selection samples do not depend on N. So one pass up to the largest N, with the counts
read off at each smaller N on the way (:meth:`bench.certify.procedures.cohen.CohenFixedN.
certify_prefixes`), gives at every N exactly the certificate a run at that N gives. A sweep is
therefore an optimisation, not a new kind of result: each budget is stored as the very run
``bench run --budget B`` would write (same card, run id and certificates), so a later run at that
budget finds it done, tables rank it like any run, and nothing new needs trusting.

Like a run it resumes (an image is committed to every budget's run in one transaction, so a kill
loses at most the image in progress), shards (``--shard I/K``: every budget's run holds this
shard's images; ``merge`` joins shard stores) and shares its images with other processes
running the same sweep (claims under a key of its own, :func:`sweep_key`). An image already
certified in some budget's run (by an earlier ``run``) is only certified for the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.certify.budget import n_for_budget
from bench.certify.records import Certificate, RunCard
from bench.data import loaders
from bench.errors import ConfigError
from bench.progress import progress
from bench.registry.entries import load_registry
from bench.running.devices import describe_device
from bench.running.executors import check_image
from bench.running.memory import is_out_of_memory
from bench.running.plan import Prepared, RunOptions, prepare_budgets
from bench.running.runner import (
    RunResult,
    _out_of_memory_error,
    _Pace,
    _regrid,
    check_shard_has_images,
    claimed_indices,
    select_todo,
    warn_if_expensive,
)
from bench.store.database import ClaimSession, Store

SWEEP_PROCEDURE = "cohen"  # the prefix-stable procedure; a cascade or sequential run is not


def check_budgets(budgets: Sequence[int]) -> list[int]:
    """The budgets, ascending, each once; positive integers (checked before anything loads)."""
    if not budgets:
        raise ConfigError("--budgets is empty; give budgets such as 100,1000,10000")
    bad = [b for b in budgets if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad:
        raise ConfigError(f"--budgets must be positive integers (predictions per image), got "
                          f"{', '.join(map(str, bad))}")
    return sorted(set(budgets))


def check_sweep_options(opts: RunOptions) -> None:
    """What a sweep cannot take: N or a single budget (the budgets set N), sequential
    certification (it has no fixed N) and another executor than this process."""
    if opts.n is not None or opts.budget is not None or opts.budget_flops is not None:
        raise ConfigError("--budgets sets N for each budget; drop --n / --budget / "
                          "--budget-flops")
    if opts.certification != "fixed":
        raise ConfigError("a budget sweep certifies with a fixed N per budget; drop "
                          "--certification sequential")
    if opts.executor != "serial":
        raise ConfigError("a budget sweep runs in this process; drop --executor")


def prepare_sweep(opts: RunOptions, budgets: Sequence[int], *,
                  flops_unit: bool = False) -> list[Prepared]:
    """One prepared run per budget (ascending; predictions per image, or FLOPs per image with
    ``flops_unit``), models loaded once; refused where the procedure is not Cohen's fixed-N
    CERTIFY or two budgets give one N."""
    check_sweep_options(opts)
    budgets = check_budgets(budgets)
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=loaders.DATASET_NAMES)
    method = registry.method(opts.method).instantiate(opts.dataset, opts.params)
    _check_procedure(opts, opts.procedure or getattr(method, "PROCEDURE", SWEEP_PROCEDURE))
    preps = prepare_budgets(opts, budgets, flops_unit=flops_unit)  # models loaded once
    _check_procedure(opts, preps[0].procedure.name, preps[-1].procedure)
    seen: dict[int, int] = {}
    for b, prep in zip(budgets, preps, strict=True):
        n = prep.procedure.budget.n
        if n in seen:
            how = ("(N0 + N) x FLOPs per sample <= F" if flops_unit else
                   f"at m = {prep.procedure.budget.m} (N = budget // m)")
            raise ConfigError(f"budgets {seen[n]:,} and {b:,} both give N = {n:,} {how}: the "
                              "same run; drop one")
        seen[n] = b
    return preps


def configurations(base: RunOptions, methods: Sequence[str], ms: Sequence[int] | None,
                   smallest: int) -> list[tuple[str, dict[str, Any]]]:
    """(method, param overrides) per sweep: one per value of ``ms`` for a method whose m sets
    its predictions per sample (DiffSmooth's), else one with the method's own params. Checked
    before any model is loaded (each m fits the smallest budget)."""
    if not methods:
        raise ConfigError("--methods is empty; name at least one method, e.g. gaussian,dds")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"each method may appear once in --methods, got {', '.join(methods)}")
    if ms is not None and (not ms or any(m < 1 for m in ms)):
        raise ConfigError(f"--m must list positive integers, got {list(ms)}")
    registry = load_registry(base.registry, extra=base.extra_registries,
                             datasets=loaders.DATASET_NAMES)
    out: list[tuple[str, dict[str, Any]]] = []
    for name in methods:
        key = registry.method(name).instantiate(base.dataset, base.params).m_param()
        if key is not None and ms:
            for m in ms:
                n_for_budget(smallest, int(m), name)
            out += [(name, {key: int(m)}) for m in ms]
        else:
            out.append((name, {}))
    return out


def _check_procedure(opts: RunOptions, name: str, procedure=None) -> None:
    if name != SWEEP_PROCEDURE or (procedure is not None
                                   and not hasattr(procedure, "certify_prefixes")):
        raise ConfigError(f"method {opts.method!r} is certified with the {name} procedure, "
                          "whose samples at one budget are not a prefix of those at a larger "
                          "one; certify it with 'run --budget B' per budget")


def sweep_key(cards: Sequence[RunCard]) -> str:
    """The claim key of a sweep: processes running the same sweep share its images."""
    ids = ",".join(card.run_id for card in cards)
    return "sweep:" + hashlib.sha256(ids.encode()).hexdigest()[:12]


@dataclass
class _Target:
    """One budget of a sweep: its run id in the store, and the card to create it with (None
    when the run exists)."""

    prep: Prepared
    run_id: str
    create: RunCard | None
    new: int = 0  # images this process certified into it


def sweep(opts: RunOptions, budgets: Sequence[int], *,
          flops_unit: bool = False) -> list[RunResult]:
    """Certify ``opts`` at every budget of ``budgets`` (predictions per image; FLOPs per image
    with ``flops_unit``) in one pass per image; one :class:`RunResult` per budget, ascending,
    each the run ``run --budget B`` (``--budget-flops F``) gives. Raises
    :class:`bench.running.runner.EmptyShard` for a shard without images."""
    preps = prepare_sweep(opts, budgets, flops_unit=flops_unit)
    lead = preps[-1]  # the largest N: its stream holds every smaller N's samples
    check_shard_has_images(lead)
    store = Store(lead.opts.results)
    try:
        if lead.flop_cache is not None:  # the results folder exists now
            lead.flop_cache.save()
        targets = []
        for prep in preps:
            found = store.find_run(prep.card)
            targets.append(_Target(prep, found or prep.card.run_id,
                                   None if found else prep.card))
        ids = [t.run_id for t in targets]
        done = [store.done_indices(run_id) for run_id in ids]
        todo = [idx for idx in select_todo(lead, set())
                if any(idx not in d for d in done)]
        if todo:
            try:
                _certify(targets, store, todo)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise _out_of_memory_error(lead, exc) from None
                raise
        results = []
        for t in targets:
            run_id = store.open_run(t.prep.card) if t.create is not None else t.run_id
            if lead.opts.radii is not None:
                _regrid(store, run_id, t.prep.card)
            folder, summary = store.export(run_id, t.prep.indices)
            results.append(RunResult(run_id=run_id, folder=folder, summary=summary,
                                     new_images=t.new))
        return results
    finally:
        store.close()


def _certify(targets: list[_Target], store: Store, todo: list[int]) -> None:
    """Certify each image of ``todo`` that no other process of this sweep holds, at every
    budget whose run lacks it (counted in each target's ``new``)."""
    lead = targets[-1].prep
    opts = lead.opts
    ids = [t.run_id for t in targets]
    key = sweep_key([t.prep.card for t in targets])
    warn_if_expensive(lead, todo)
    bar = progress(total=len(todo), unit="img",
                   desc=f"sweep {opts.method}/{opts.dataset} sigma={opts.sigma:g}",
                   disable=not opts.progress, dynamic_ncols=True)
    pace = _Pace()
    try:
        with ClaimSession(store, key) as claims:
            for idx in claimed_indices(claims, todo, pace.chunk):
                have = store.runs_with(ids, idx)  # another run or sweep may have done some
                missing = [t for t in targets if t.run_id not in have]
                if not missing:
                    store.add_to_runs([], claim=(key, idx))
                    continue
                certs = _certify_image(lead, idx, [t.prep.procedure.budget.n for t in missing])
                items = []
                for t, cert in zip(missing, certs, strict=True):
                    items.append((t.run_id, cert, t.create))
                store.add_to_runs(items, claim=(key, idx))
                for t in missing:
                    t.create = None  # stored with this image
                    t.new += 1
                pace.add(certs[-1].seconds)
                bar.update(1)
    finally:
        bar.close()


def _certify_image(lead: Prepared, idx: int, ns: Sequence[int]) -> list[Certificate]:
    """The image's certificates at each N of ``ns`` (as the serial executor certifies one)."""
    x, label = lead.dataset[idx]
    path_of = getattr(lead.dataset, "path_of", None)
    path = path_of(idx) if callable(path_of) else None
    check_image(lead.dataset, idx, x, path)
    device = describe_device(lead.device)
    certs = lead.procedure.certify_prefixes(x.to(lead.device), idx, int(label), ns)
    return [replace(c, device=device, path=path or c.path) for c in certs]


