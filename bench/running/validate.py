"""Validate method submissions: schema, adapter import, models, and a smoke certification.

What a maintainer would check by hand before accepting a new method, in one command:

1. the registry files parse and pass the strict schema (errors name file, entry and field);
2. the adapter imports, is a ``bench.contract.Method`` and accepts its registered params;
3. every model the entry references resolves to a file whose sha256 matches the registry
   (models not downloaded are listed, not failed: weights live outside the repository);
4. the real runner certifies two images with a tiny N into a temporary results folder, so
   the base classifier is exercised end to end exactly as a benchmark run would; then certifies
   them twice more, at another batch size and after another global ``torch.manual_seed``, and
   requires the same counts: a base classifier that couples the samples of a batch (BatchNorm
   in train mode, a batch-wide statistic) or draws from torch's global RNG fails.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.data import loaders
from bench.errors import CertbenchError, ConfigError, DataError, ModelError
from bench.nets.loaders import ZOO_DIR, sha256_file
from bench.registry.download import models_dir as default_models_dir
from bench.registry.entries import load_registry
from bench.running.plan import RunOptions
from bench.running.runner import run
from bench.store.database import Store

SMOKE_IMAGES = 2
SMOKE_N0 = 10
SMOKE_N = 64
SMOKE_BATCHES = (SMOKE_N, 7)  # the smoke run's batch, then a small odd one
SMOKE_TORCH_SEEDS = (0, 12345)  # the global torch seed of the smoke run, then another


@dataclass
class MethodReport:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class Report:
    methods: list[MethodReport] = field(default_factory=list)
    registry_error: str = ""

    @property
    def ok(self) -> bool:
        return not self.registry_error and all(m.ok for m in self.methods)

    def lines(self) -> list[str]:
        if self.registry_error:
            return [f"FAIL registry: {self.registry_error}"]
        if not self.methods:
            return ["FAIL no methods to validate"]
        return [m.line() for m in self.methods]


def _model_refs(entry) -> list[tuple[str, str, str]]:
    """(dataset, role, model name) for every model an entry references."""
    refs = []
    for dataset, block in entry.datasets.items():
        for role, ref in (block or {}).items():
            if role == "params":
                continue
            names = ref.values() if isinstance(ref, dict) else [ref]
            refs += [(dataset, role, name) for name in names]
    return refs


def check_models(registry, entry, models_dir: Path) -> tuple[int, list[str]]:
    """Resolve and hash-check the entry's models; (checked, notes). Raises on a bad hash."""
    checked, notes = 0, []
    for dataset, role, name in _model_refs(entry):
        model = registry.model(name)
        base = ZOO_DIR if model["source"] == "zoo" else models_dir
        path = Path(model["path"])
        path = path if path.is_absolute() else base / path
        where = f"{model.origin}: models.{name}"
        if not path.is_file():
            if model["source"] == "zoo":
                raise ConfigError(f"{where}.path: zoo file {path} is missing")
            notes.append(f"{name} not downloaded")
            continue
        if "sha256" in model.fields:
            digest = sha256_file(path)
            if digest != model["sha256"]:
                raise ConfigError(f"{where}.sha256: {path} has sha256 {digest}, the registry "
                                  f"says {model['sha256']} (methods.{entry.name}.datasets."
                                  f"{dataset}.{role})")
        else:
            notes.append(f"{name} has no sha256")
        checked += 1
    return checked, notes


def smoke_target(entry, dataset: str | None) -> tuple[str, float | None]:
    """Dataset and sigma for the smoke run: digits when registered, else the first dataset;
    the first registered sigma of a per-sigma model mapping, else None (the procedure's
    default: 0.25, or a cascade's largest scale)."""
    if dataset is None:
        names = list(entry.datasets)
        dataset = "digits" if not names or "digits" in names else names[0]
    sigma = None
    for role, ref in (entry.dataset_config(dataset) or {}).items():
        if role != "params" and isinstance(ref, dict) and ref:
            sigma = float(sorted(ref)[0])
            break
    return dataset, sigma


def _smoke_run(entry, registry_path, extra, ds: str, sigma: float | None, data_dir, models_dir,
               image_size: int | None, results: Path, *, batch: int, torch_seed: int):
    """One smoke certification at this batch size and global torch seed (the caller's global
    RNG state is restored afterwards); the run's result and its certificates' counts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        result = run(RunOptions(
            method=entry.name, dataset=ds, sigma=sigma, n0=SMOKE_N0, n=SMOKE_N, batch=batch,
            max_images=SMOKE_IMAGES, results=results, registry=registry_path,
            extra_registries=tuple(extra), data_dir=data_dir, models_dir=models_dir,
            image_size=image_size, device="cpu", progress=False))
    store = Store(results)
    try:
        counts = [(c.idx, c.counts_select, c.counts_estimate,
                   [(s["counts_select"], s["counts_estimate"]) for s in c.stages])
                  for c in store.certs(result.run_id)]
    finally:
        store.close()
    return result, counts


def smoke(entry, registry_path, extra, dataset: str | None, data_dir, models_dir, *,
          image_size: int | None = None) -> str:
    """Certify two images with a tiny N through the real runner, again after another global
    torch seed and at another batch size (same counts required); describe what came out."""
    ds, sigma = smoke_target(entry, dataset)
    where = f"methods.{entry.name}"
    with tempfile.TemporaryDirectory(prefix="certbench-validate-") as tmp:
        args = (entry, registry_path, extra, ds, sigma, data_dir, models_dir, image_size)
        try:
            result, counts = _smoke_run(*args, Path(tmp) / "smoke", batch=SMOKE_BATCHES[0],
                                        torch_seed=SMOKE_TORCH_SEEDS[0])
        except DataError as exc:  # the data is not on this machine: not the entry's fault
            return f"smoke NOT RUN ({ds} data not available here: {exc})"
        except ModelError as exc:
            if "not found" not in str(exc):
                raise
            return f"smoke NOT RUN (weights not downloaded here: {exc})"
        certified = result.summary.images
        tsv = (result.folder / "certs.tsv").read_text().splitlines()
        # Separate stores: batch size and global seed are not part of the run id.
        _, reseeded = _smoke_run(*args, Path(tmp) / "seed", batch=SMOKE_BATCHES[0],
                                 torch_seed=SMOKE_TORCH_SEEDS[1])
        _, rebatched = _smoke_run(*args, Path(tmp) / "batch", batch=SMOKE_BATCHES[1],
                                  torch_seed=SMOKE_TORCH_SEEDS[0])
    if certified != SMOKE_IMAGES or len(tsv) != SMOKE_IMAGES + 1:
        raise ConfigError(f"{where}: smoke run certified {certified} images, "
                          f"expected {SMOKE_IMAGES}")
    radii = [float(line.split("\t")[3]) for line in tsv[1:]]
    if not all(math.isfinite(r) and r >= 0 for r in radii):
        raise ConfigError(f"{where}: smoke run produced radii {radii}")
    if reseeded != counts:
        raise ConfigError(f"{where}: counts change with the global torch seed (torch."
                          f"manual_seed {SMOKE_TORCH_SEEDS[0]} vs {SMOKE_TORCH_SEEDS[1]}): the "
                          "base classifier draws from the global RNG; use a seeded generator")
    if rebatched != counts:
        raise ConfigError(f"{where}: counts change with the batch size ({SMOKE_BATCHES[0]} vs "
                          f"{SMOKE_BATCHES[1]}): the base classifier couples the samples of a "
                          "batch (BatchNorm in train mode?)")
    run_sigma = result.summary.card.identity["sigma"]
    return (f"smoke {SMOKE_IMAGES} images on {ds} sigma {run_sigma:g} N={SMOKE_N}: radii "
            + ", ".join(f"{r:.3f}" for r in radii)
            + f"; counts unchanged at batch {SMOKE_BATCHES[1]} and another global seed")


def validate_method(registry, name: str, registry_path, extra, dataset, smoke_run: bool,
                    data_dir, models_dir, image_size: int | None = None) -> MethodReport:
    entry = registry.method(name)
    if entry.reported_only:
        return MethodReport(name, True, f"reported-only, no adapter (cannot be run or smoke "
                                        f"tested); {len(entry.reported)} reported rows valid")

    try:
        entry.instantiate()  # the adapter imports and accepts the entry's params
        for each in entry.datasets:  # and each dataset's params (not rebinding `dataset`)
            entry.instantiate(each)
        parts = [f"adapter {entry.adapter} imports"]
        checked, notes = check_models(registry, entry, default_models_dir(models_dir))
        parts.append(f"{checked} model(s) hash-checked" + (f" ({'; '.join(notes)})"
                                                           if notes else ""))
        if entry.reported:
            parts.append(f"{len(entry.reported)} reported rows")
        if smoke_run:
            parts.append(smoke(entry, registry_path, extra, dataset, data_dir, models_dir,
                               image_size=image_size))
            if parts[-1].startswith("smoke NOT RUN"):  # unverified is not OK
                return MethodReport(name, False, "; ".join(parts) + "; pass --data-dir or "
                                    "--models-dir, or --no-smoke to skip the smoke run knowingly")
    except CertbenchError as exc:
        return MethodReport(name, False, str(exc))
    except Exception as exc:  # an adapter bug must be reported, not crash the whole report
        return MethodReport(name, False, f"{entry.origin}: methods.{name}: "
                                         f"{type(exc).__name__}: {exc}")
    return MethodReport(name, True, "; ".join(parts))


def validate(registry_path: str | Path | None = None, *, extra: Iterable[str | Path] = (),
             methods: Sequence[str] = (), dataset: str | None = None, smoke: bool = True,
             data_dir: Path | None = None, models_dir: Path | None = None,
             image_size: int | None = None) -> Report:
    """Validate the chosen methods (default: those of the extra files, else all)."""
    extra = [Path(p) for p in extra]
    try:
        registry = load_registry(registry_path, extra=extra, datasets=loaders.DATASET_NAMES)
    except CertbenchError as exc:
        return Report(registry_error=str(exc))
    if methods:
        names = list(methods)
        for name in names:
            try:
                registry.method(name)
            except CertbenchError as exc:
                return Report(registry_error=str(exc))
    elif extra:
        extra_files = {str(p) for p in extra}
        names = [m.name for m in registry.methods.values() if m.origin in extra_files]
    else:
        names = list(registry.methods)
    report = Report()
    for name in names:
        report.methods.append(validate_method(registry, name, registry_path, extra, dataset,
                                              smoke, data_dir, models_dir, image_size))
    return report
