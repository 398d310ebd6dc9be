"""Give stored runs certified before FLOPs were measured their ``compute`` block.

A run's card records the forward FLOPs of one base-classifier call (:mod:`bench.running.flops`)
outside its identity. For a run stored without it, :func:`backfill` prepares the run again
from its card (method, params, the models by role and name, sigma, dataset; nothing is
certified), checks that what it loaded is what the run used (the models' sha256, the method,
adapter, params, sigma, procedure and data, compared key by key with the stored identity),
measures, and writes the block into the stored card. The run id and every certificate stay
as they are; the run's export is written again with the figures.

    python -m bench merge leaderboards --results X    # the committed runs as a store
    python -m bench flops --results X                 # this
    python -m bench leaderboard --results X --out leaderboards
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.certify.records import RunCard
from bench.errors import CertbenchError, ConfigError
from bench.running.plan import RunOptions, prepare
from bench.running.runner import add_compute
from bench.store.database import DB_NAME, Store

# The identity keys that decide the base classifier (and so its FLOPs): a prepared run must
# match the stored one on all of them before its figure is recorded for it.
MATCHED = ("method", "adapter", "params", "models", "dataset", "data_fingerprint", "sigma",
           "procedure", "noise")


@dataclass
class Backfilled:
    run_id: str
    folder: str
    flops_per_prediction: float | None  # None: not done (see note)
    note: str = ""


def options_for(card: RunCard, results: Path, **overrides) -> RunOptions:
    """The run options that prepare ``card``'s run: its method, dataset, sigma (the cascade's
    comes from its scales), sizes, params and each role's model by name."""
    ident = card.identity
    procedure = ident.get("procedure")
    roles = card.extra.get("model_roles") or {}
    return RunOptions(
        method=ident["method"], dataset=ident["dataset"],
        sigma=None if procedure == "cascade" else ident["sigma"],
        n0=int(ident["n0"]), n=int(ident["n"]), alpha=float(ident["alpha"]),
        subset=ident["subset"], seed=int(ident["seed"]), results=results,
        model=[f"{role}={ref['name']}" for role, ref in roles.items()] or None,
        params=dict(ident.get("params") or {}),
        procedure=None if procedure in (None, "sequential") else procedure,
        certification="sequential" if procedure == "sequential" else "fixed",
        progress=False, **overrides)


def mismatch(stored: RunCard, prepared: RunCard) -> str | None:
    """The first identity key (of :data:`MATCHED`) on which the prepared run differs."""
    for key in MATCHED:
        if stored.identity.get(key) != prepared.identity.get(key):
            return key
    return None


def backfill(results: Path, *, device: str = "cpu",
             on_run: Callable[[Backfilled], None] | None = None) -> list[Backfilled]:
    """Record ``compute`` in every run of the store at ``results`` that lacks it (claimed runs
    have no models and are left alone); return what was done per run."""
    store = Store(results)
    done: list[Backfilled] = []
    try:
        for stored in store.runs_of():
            card = stored.card
            if "compute" in card.extra or card.kind == "claimed":
                continue
            item = Backfilled(card.run_id, card.folder_name, None)
            try:
                prep = prepare(options_for(card, Path(results), device=device))
            except CertbenchError as exc:
                item.note = f"not prepared again: {exc}"
            else:
                key = mismatch(card, prep.card)
                if key is not None:
                    item.note = (f"prepared again, its {key} differs from the stored run's: "
                                 "nothing recorded")
                else:
                    compute = prep.card.extra["compute"]
                    add_compute(store, card.run_id, prep.card)
                    store.export(card.run_id)
                    if prep.flop_cache is not None:
                        prep.flop_cache.save()
                    item.flops_per_prediction = compute["flops_per_prediction"]
            done.append(item)
            if on_run is not None:
                on_run(item)
    finally:
        store.close()
    return done


def check_results(results: Path) -> None:
    """A store to write into: exported runs (``leaderboards``) are merged into one first."""
    if not (Path(results) / DB_NAME).is_file():
        raise ConfigError(f"{results} holds no results store ({DB_NAME}); for exported runs "
                          f"run 'merge FOLDER --results {results}' first")
