"""Run a planned request: resume, claim images, hand them to an executor, commit, export.

:func:`run` prepares the run (:func:`bench.running.plan.prepare`: every check before the first
noisy sample), hands the images still to do to an executor and commits each certificate to the
store as it arrives; the run id is the hash of the card's identity, so the same command
resumes. The executor is chosen here (:func:`make_executor`): serial in this process
(:mod:`bench.running.executors`) or on Ray actors (:mod:`bench.running.ray_executor`, which
never imports ray until a run asks for it).

The run row is stored with the run's first certificate (one transaction): a run whose first
image fails (a corrupt image, a model error, memory running out) leaves no run behind, and the
store is as it was. Processes running the same command at once share the images: each claims
a few images at a time (:class:`bench.store.database.ClaimSession`), so every image is
certified once, and each waits for the images others hold before it exports, so every export
is complete. An allocation that fails (:mod:`bench.running.memory`) stops the run with one
line asking for a smaller ``--batch``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench.certify.records import RunCard, RunSummary
from bench.errors import ConfigError
from bench.progress import progress
from bench.running import feasibility
from bench.running.executors import EXECUTORS, Executor, SerialExecutor, polled_indices
from bench.running.memory import is_out_of_memory
from bench.running.plan import Prepared, RunOptions, prepare
from bench.running.ray_executor import RayExecutor, import_ray, probe_address
from bench.store.database import DB_NAME, ClaimSession, Store

WARN_TOTAL_S, WARN_IMAGE_S = 3600.0, 300.0  # warn before a run estimated to take longer
CLAIM_SECONDS = 2.0  # claim about this much work at a time (at least one image, at most 64)
CLAIM_MAX = 64
WAIT_POLL_S = 0.5  # how often a process with nothing left to claim looks at others' images


@dataclass
class RunResult:
    run_id: str
    folder: Path
    summary: RunSummary
    new_images: int


def _out_of_memory_error(prep: Prepared, exc: BaseException) -> ConfigError:
    tried = re.search(r"tried to allocate (\d+ bytes|[\d.]+ ?[KMGT]i?B)", str(exc), re.I)
    what = f"allocating {tried.group(1)} failed" if tried else "an allocation failed"
    return ConfigError(
        f"--batch {prep.opts.batch} does not fit in memory on {prep.device} ({what}); use a "
        "smaller --batch (the batch size never changes a certificate)")


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


def add_compute(store: Store, run_id: str, card: RunCard) -> None:
    """A run stored before FLOPs were measured gains this run's ``compute`` block (descriptive:
    the identity, the run id and the certificates are unchanged); a recorded one is kept."""
    stored = store.run_card(run_id)
    if "compute" in stored.extra or "compute" not in card.extra:
        return
    store.update_card(run_id, RunCard(identity=stored.identity,
                                      extra={**stored.extra, "compute": card.extra["compute"]}))


class EmptyShard(Exception):
    """This shard holds none of the subset's images (more shards than images, e.g. a job array
    larger than the subset): a normal outcome, not an error. Nothing is certified and no run,
    store or export is written; the message says so."""


def run(opts: RunOptions) -> RunResult:
    """Certify the requested images (skipping finished ones, sharing them with other processes
    on the same run) and export the run's files. Raises :class:`EmptyShard` for a shard
    without images, before anything is written."""
    return run_prepared(prepare(opts))


def run_prepared(prep: Prepared) -> RunResult:
    """:func:`run` of a run already prepared (:func:`bench.running.plan.prepare`), e.g. by a
    caller that reads its card first (``bench.evaluate``): a run is prepared once."""
    opts = prep.opts
    check_shard_has_images(prep)
    store = Store(opts.results)
    try:
        if prep.flop_cache is not None:  # the results folder exists now
            prep.flop_cache.save()
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
        if found:
            add_compute(store, run_id, prep.card)
        folder, summary = store.export(run_id, prep.indices)
        return RunResult(run_id=run_id, folder=folder, summary=summary, new_images=new)
    finally:
        store.close()


@dataclass
class Feasibility:
    """What :func:`estimate_run` predicts for a run, without certifying anything."""

    run_id: str
    images_left: int  # this shard's images not yet in the store (capped by --max-images)
    estimate: feasibility.Estimate
    worst_case: bool  # sequential: every image runs to the last look (most stop earlier)


def estimate_run(opts: RunOptions) -> Feasibility:
    """The run's predicted cost (``bench run --estimate``): prepared as for certifying (so the
    run id and memory format are the real ones), the images still to do counted in an existing
    store (read only, never created), then one full ``--batch`` of noisy copies of the first
    such image timed through the base classifier and extrapolated
    (:func:`bench.running.feasibility.estimate`). Nothing is certified or written."""
    prep = prepare(opts)
    check_shard_has_images(prep)
    done: set[int] = set()
    run_id = prep.card.run_id
    if (Path(opts.results) / DB_NAME).is_file():
        store = Store(opts.results, readonly=True)
        try:
            run_id = store.find_run(prep.card) or run_id
            done = store.done_indices(run_id)
        finally:
            store.close()
    todo = select_todo(prep, done)
    x, _ = prep.dataset[(todo or shard_images(prep))[0]]
    est = feasibility.estimate(prep.procedure, x.to(prep.device), len(todo),
                               samples=min(4, prep.opts.batch), min_seconds=2.0,
                               max_samples=prep.opts.batch)
    return Feasibility(run_id=run_id, images_left=len(todo), estimate=est,
                       worst_case=prep.procedure.name == "sequential")


def check_executor_options(executor: str, address: str | None = None,
                           workers: int | None = None) -> None:
    """The run's executor options, checked before anything is loaded: a known executor,
    ``--address``/``--workers`` only with ``ray``, Ray importable when asked for, and a
    cluster answering at ``--address`` (:func:`bench.running.ray_executor.probe_address`)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}; use {' or '.join(EXECUTORS)}")
    if executor != "ray":
        given = [name for name, value in (("--address", address), ("--workers", workers))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} only apply to --executor ray")
        return
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if address is not None:  # fails in seconds, before any store is opened
        probe_address(address)
    import_ray()


def make_executor(prep: Prepared) -> Executor:
    """The executor a prepared run asks for."""
    opts = prep.opts
    check_executor_options(opts.executor, opts.address, opts.workers)
    if opts.executor == "ray":
        return RayExecutor(prep, address=opts.address, workers=opts.workers)
    return SerialExecutor(prep.procedure, prep.dataset, prep.device)


def certify_shared(prep: Prepared, store: Store, run_id: str, todo: list[int], *,
                   create: RunCard | None = None) -> int:
    """Certify the images of ``todo`` that no other process certifies, claiming a few at a
    time; return how many this process certified. Returns once every image of ``todo`` is
    certified (waiting for images that other live processes hold)."""
    opts = prep.opts
    executor = make_executor(prep)  # refused here (e.g. Ray not installed) before any work
    warn_if_expensive(prep, todo)
    samples = prep.procedure.budget.n0 + prep.procedure.budget.n
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
            # (bench.running.executors.polled_indices); the certificates' iterator is closed on any
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


