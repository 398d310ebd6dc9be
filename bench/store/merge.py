"""Merge results stores: the shards of a run certified in other folders or on other machines.

``merge(target, sources)`` reads every run of every source, checks it all, and only then
writes, in one transaction: a refused merge (:class:`MergeError`) changes nothing.

* Sources are read-only: a store is opened read-only (an older schema is read as it is, never
  migrated; an empty file is refused), and a folder of exported runs (``runs/*/certs.tsv``
  with their cards, e.g. the committed ``leaderboards``; :mod:`bench.store.exports`) is a source
  too, every card checked against its run id, so a store can be rebuilt from exports. A
  certificate read from an export carries no per-class counts; two copies of one image are
  compared on the counts only when both have them.

* A run is matched by its run id *and* its identity: a source whose card for a run id differs
  from the target's, or from another source's, is refused, naming both folders and the first
  differing identity key. A run stored under another id with the same identity (an older id
  scheme) is refused too: merge never guesses which id is meant.
* A certificate for an image that is already there (in the target or an earlier source) must
  be identical in everything but its wall-clock time and device description: then it is a
  duplicate, counted and kept once; otherwise the merge is refused as a conflict.
* Gaps: the subset's images that no store holds. The subset's indices come from the dataset's
  subset rule (no images are loaded) when they reproduce the card's ``subset_hash``; otherwise
  only the number missing out of ``subset_size`` is known.

A run whose sources report on different radius grids keeps the first one's grid (the
target's, else the first source's) and says so in a note.

Merged runs are exported as ``run`` exports them (``runs/<folder>/certs.tsv`` and
``summary.json`` over the subset), so shards merged give the unsharded run's files. Merging
again is idempotent: what the target holds already is counted as a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.certify.records import Certificate, RunCard
from bench.data import specs
from bench.errors import CertbenchError, StoreError
from bench.store.database import DB_NAME, Store
from bench.store.exports import ExportedRuns, exports_folder, open_results

# Certificate fields that are not part of what was certified: wall-clock seconds and the
# description of the device that did it (the noise generator's type is in the run identity).
IGNORED_FIELDS = ("time", "device")
# Per-class counts: a store keeps them, an export (certs.tsv) does not; compared when both have.
COUNT_FIELDS = ("counts_select", "counts_estimate")


class MergeError(StoreError):
    """A merge refused (conflicting cards or certificates, a missing source): nothing written."""


@dataclass
class SourceCounts:
    source: Path
    merged: int = 0  # certificates this source added
    duplicates: int = 0  # identical to one already there (target or an earlier source)


@dataclass
class RunMerge:
    """What merging did to one run."""

    card: RunCard
    sources: list[SourceCounts] = field(default_factory=list)
    before: int = 0  # certificates the target held before
    images: int = 0  # certificates the target holds after
    gaps: list[int] | None = None  # subset indices certified by no store (None: unknown)
    missing: int | None = None  # how many of the subset are missing (None: unknown)
    folder: Path | None = None  # the export
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.card.run_id


@dataclass
class MergeResult:
    target: Path
    sources: list[Path]
    runs: list[RunMerge]


@dataclass
class _Plan:
    card: RunCard
    card_from: Path  # where the card comes from (the target, or the first source with it)
    certs: dict[int, Certificate]  # every certificate after the merge, by index
    origin: dict[int, Path] = field(default_factory=dict)  # the store each came from
    new: list[Certificate] = field(default_factory=list)  # to write, in source order
    report: RunMerge | None = None


def merge(target: str | Path, sources: Sequence[str | Path]) -> MergeResult:
    """Merge the runs of ``sources`` (results folders) into the store at ``target``, export
    them, and say what happened. Raises :class:`MergeError` (nothing written) on a conflict."""
    target = Path(target)
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise MergeError("merge needs at least one source results folder")
    for src in srcs:
        _check_source(src, target)
    _check_export_path(target / "runs")

    # The target is read (read-only) for the plan only when it exists: a refused merge
    # creates nothing.
    existing = Store(target, readonly=True) if (target / DB_NAME).is_file() else None
    try:
        plans = _plan(existing, target, srcs)
    finally:
        if existing is not None:
            existing.close()
    for plan in plans.values():
        _check_export_path(target / "runs" / plan.card.folder_name, "certs.tsv",
                           "summary.json")
    store = Store(target)
    try:
        # One transaction: every run and certificate, or (on any error) none of them.
        store.add_runs((plan.card, plan.new) for plan in plans.values()
                       if plan.new or plan.card_from != target)
        return MergeResult(target=target, sources=srcs, runs=_export(store, plans))
    finally:
        store.close()


def _check_source(src: Path, target: Path) -> None:
    """A source is a store (not an empty file, not the target's) or a folder of exports."""
    db = src / DB_NAME
    if db.is_file():
        if db.stat().st_size == 0:
            raise MergeError(f"{db} is an empty file, not a results store; pass the --results "
                             "folder of a run; merge refused, nothing written")
        if (target / DB_NAME).exists() and _same_file(db, target / DB_NAME):
            raise MergeError(f"{src} is the target store itself; pass another --results")
        return
    if exports_folder(src) is None:
        raise MergeError(f"{src} holds no results store ({DB_NAME}) and no exported runs "
                         "(runs/*/certs.tsv with their card); pass the --results folder of a "
                         "run")


def _check_export_path(folder: Path, *files: str) -> None:
    """The merged runs' exports can be written there: no file where a folder goes and no
    folder where a file goes (checked before anything is written)."""
    if folder.exists() and not folder.is_dir():
        raise MergeError(f"{folder} is a file where the merged runs' exports go; move it "
                         "aside; merge refused, nothing written")
    for name in files:
        if (folder / name).is_dir():
            raise MergeError(f"{folder / name} is a folder where a merged run's export goes; "
                             "move it aside; merge refused, nothing written")


def _export(store: Store, plans: Mapping[str, _Plan]) -> list[RunMerge]:
    """Export the merged runs (after the certificates were committed) and fill the reports."""
    try:
        runs = []
        for plan in plans.values():
            report = plan.report
            assert report is not None
            indices = subset_indices(plan.card.identity)
            report.images = len(plan.certs)
            size = plan.card.identity.get("subset_size")
            if indices is not None:
                report.gaps = [i for i in indices if i not in plan.certs]
                report.missing = len(report.gaps)
            elif isinstance(size, int):
                report.missing = max(0, size - len(plan.certs))
            report.folder, _ = store.export(plan.card.run_id, indices)
            runs.append(report)
    except OSError as exc:
        raise StoreError(f"merged the certificates into {store.path}, but writing their "
                         f"exports failed ({exc}); fix that and run the same merge again to "
                         "write them") from None
    return runs


def _plan(store: Store | None, target: Path, srcs: list[Path]) -> dict[str, _Plan]:
    """Read everything and check it; nothing is written here."""
    plans: dict[str, _Plan] = {}
    in_target = {r.run_id: r.card for r in store.runs_of()} if store is not None else {}
    for src in srcs:
        source: Store | ExportedRuns | None = open_results(src)  # read-only
        assert source is not None  # _check_source
        try:
            for stored in source.runs_of():
                card = stored.card
                plan = plans.get(card.run_id)
                if plan is None:
                    plan = _start(store, target, in_target, plans, card, src)
                    plans[card.run_id] = plan
                else:
                    _check_same(card, src, plan.card, plan.card_from)
                    _note_grid(plan, card, src)
                counts = SourceCounts(source=src)
                plan.report.sources.append(counts)
                for cert in source.certs(card.run_id):
                    held = plan.certs.get(cert.idx)
                    if held is None:
                        plan.certs[cert.idx] = cert
                        plan.origin[cert.idx] = src
                        plan.new.append(cert)
                        counts.merged += 1
                        continue
                    diff = certificate_difference(held, cert)
                    if diff:
                        raise MergeError(
                            f"run {card.run_id} image {cert.idx}: {plan.origin[cert.idx]} and "
                            f"{src} hold different certificates ({diff}); merge refused, "
                            "nothing written")
                    counts.duplicates += 1
        finally:
            source.close()
    return plans


def _start(store: Store | None, target: Path, in_target: Mapping[str, RunCard],
           plans: Mapping[str, _Plan], card: RunCard, src: Path) -> _Plan:
    """The plan of a run first seen in ``src``: against the target's run with its id, if any."""
    run_id = card.run_id
    for other_id, other in [*in_target.items(), *((p.card.run_id, p.card) for p in
                                                 plans.values())]:
        if other_id != run_id and other.identity == card.identity:
            where = target if other_id in in_target else plans[other_id].card_from
            raise MergeError(
                f"run {run_id} of {src} has the identity of run {other_id} of {where} under "
                "another run id (an older certbench's id); merge refused, nothing written")
    existing = in_target.get(run_id)
    if existing is not None and store is not None:
        _check_same(card, src, existing, target)
        certs = {c.idx: c for c in store.certs(run_id)}
        plan = _Plan(card=existing, card_from=target, certs=certs,
                     origin=dict.fromkeys(certs, target))
        plan.report = RunMerge(card=existing, before=len(plan.certs))
        _note_grid(plan, card, src)
        return plan
    plan = _Plan(card=card, card_from=src, certs={})
    plan.report = RunMerge(card=card)
    return plan


def _check_same(card: RunCard, src: Path, other: RunCard, other_from: Path) -> None:
    key = identity_difference(other.identity, card.identity)
    if key is not None:
        name, a, b = key
        raise MergeError(
            f"run {card.run_id}: the cards of {other_from} and {src} differ in identity key "
            f"{name!r} ({_short(a)} vs {_short(b)}); merge refused, nothing written")


def _note_grid(plan: _Plan, card: RunCard, src: Path) -> None:
    """Say so when ``src`` reports the run on another radius grid than the card kept."""
    if card.radius_grid != plan.card.radius_grid:
        plan.report.notes.append(
            f"{src} reports on another radius grid ({_grid_text(card.radius_grid)}); kept the "
            f"one of {plan.card_from} ({_grid_text(plan.card.radius_grid)})")


def _grid_text(grid: Sequence[float]) -> str:
    return _short(",".join(f"{r:g}" for r in grid), 40)


def certificate_difference(a: Certificate, b: Certificate) -> str | None:
    """The first field in which two certificates of one image differ (``field x vs y``), or
    None when they are the same certificate (wall-clock time and device text aside)."""
    ra, rb = a.to_row(), b.to_row()
    for key in ra:
        if key in IGNORED_FIELDS or (key in COUNT_FIELDS and not (ra[key] and rb.get(key))):
            continue
        if ra[key] != rb.get(key):
            return f"{'prediction' if key == 'predict' else key} {_short(ra[key])} vs " \
                   f"{_short(rb.get(key))}"
    return None


def identity_difference(a: Mapping[str, Any], b: Mapping[str, Any],
                        prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first (sorted) key in which two identities differ, dotted into nested blocks, with
    both values; None when they are equal."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va == vb:
            continue
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            found = identity_difference(va, vb, f"{prefix}{key}.")
            if found is not None:
                return found
        return f"{prefix}{key}", va, vb
    return None


def subset_indices(identity: Mapping[str, Any]) -> list[int] | None:
    """The run's subset as test-split indices, from the dataset's subset rule (no images
    loaded), when that reproduces the card's ``subset_size`` and ``subset_hash``; else None
    (an imported run's free subset name, a dataset this process does not know)."""
    size, wanted = identity.get("subset_size"), identity.get("subset_hash")
    try:
        rule = specs.spec(str(identity.get("dataset"))).subsets[identity.get("subset")]
    except (CertbenchError, KeyError, TypeError):
        return None
    if rule is None:  # the whole split: its length is the subset's size
        if not isinstance(size, int):
            return None
        indices = list(range(size))
    else:
        indices = list(rule)
    if size is not None and len(indices) != size:
        return None
    if wanted is None or specs.subset_hash(indices) != wanted:
        return None
    return indices


def format_indices(indices: Sequence[int], limit: int = 8) -> str:
    """Indices compactly: runs of three or more evenly spaced ones as ``a-b`` (step 1) or
    ``a-b/step``; at most ``limit`` parts, then how many more."""
    parts: list[str] = []
    i, n = 0, len(indices)
    while i < n:
        j = i + 1
        if j < n:
            step = indices[j] - indices[i]
            while j + 1 < n and indices[j + 1] - indices[j] == step:
                j += 1
            if j - i >= 2:
                tail = "" if step == 1 else f"/{step}"
                parts.append(f"{indices[i]}-{indices[j]}{tail}")
                i = j + 1
                continue
        parts.append(str(indices[i]))
        i += 1
    if len(parts) > limit:
        more = len(parts) - limit
        return ", ".join(parts[:limit]) + f", ... ({more} more part{'s' * (more > 1)})"
    return ", ".join(parts)


def format_result(result: MergeResult) -> str:
    """The per-run report: images merged from each source, duplicates, gaps, exports."""
    n = len(result.runs)
    lines = [f"merged {len(result.sources)} store(s) into {result.target} ({n} run"
             f"{'s' * (n != 1)})"]
    for run in result.runs:
        ident = run.card.identity
        size = ident.get("subset_size")
        sigma = ident.get("sigma")
        sigma_text = f"{sigma:g}" if isinstance(sigma, (int, float)) else str(sigma)
        lines.append(f"run {run.run_id}  {ident.get('method')} on {ident.get('dataset')}, "
                     f"sigma {sigma_text}, subset {ident.get('subset')}: {run.images}"
                     f"{'' if size is None else f'/{size}'} images")
        if run.before:
            lines.append(f"  {result.target} (target): {run.before} already there")
        for counts in run.sources:
            dup = (f", {counts.duplicates} duplicate{'s' * (counts.duplicates != 1)} "
                   "(identical, kept once)" if counts.duplicates else "")
            lines.append(f"  {counts.source}: {counts.merged} merged{dup}")
        if run.gaps:
            lines.append(f"  gaps: {len(run.gaps)} of the subset's {size} images certified by "
                         f"no store: {format_indices(run.gaps)}")
        elif run.missing:
            lines.append(f"  gaps: {run.missing} of the subset's {size} images certified by "
                         "no store (indices unknown: the subset rule is not available here)")
        elif run.missing == 0:
            lines.append("  complete: every image of the subset is certified")
        lines.extend(f"  note: {note}" for note in run.notes)
        if run.folder is not None:
            lines.append(f"  results: {run.folder / 'certs.tsv'}  "
                         f"{run.folder / 'summary.json'}")
    return "\n".join(lines)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
