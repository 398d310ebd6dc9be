"""Certify a dataset subset with one method: validate, resume, certify, record, export.

Everything that can be wrong with a request (method, dataset, subset, sizes, registry,
models) is checked before the first noisy sample. Each certificate is committed to the store
as soon as it exists; the run id is the hash of the protocol card, so the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import bench
from bench import datasets, metrics, stats
from bench import store as store_mod
from bench.errors import ConfigError
from bench.nets import load_network
from bench.protocol import Context, Cost, Method
from bench.registry import Registry, load_registry
from bench.smoothing import Smooth, chunk_size

PROTOCOL_VERSION = 1
# Defaults per dataset: N0, N, alpha follow Cohen et al.; the embedded default is sized to
# finish in well under two minutes on a 2-core CPU.
DEFAULT_N = {"digits": 5_000}
COHEN_N = 100_000
MAX_SIGMA = 10.0
MAX_N = 10**9


@dataclass
class RunOptions:
    method: str = "gaussian"
    dataset: str = "digits"
    sigma: float = 0.25
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
    model: str | None = None
    arch: str | None = None
    image_size: int | None = None
    registry: Path | None = None
    extra_registries: tuple[Path, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    # Predictions per image (N x m); sets N = budget // m for the method's m. Excludes --n.
    budget: int | None = None


@dataclass
class RunResult:
    run_id: str
    folder: Path
    summary: dict[str, Any]
    new_images: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def models_dir(opts_dir: Path | None) -> Path:
    return Path(opts_dir or os.environ.get("CERTBENCH_MODELS", "models"))


def check_sizes(opts: RunOptions, n: int) -> None:
    if not 0 < opts.sigma <= MAX_SIGMA:
        raise ConfigError(f"--sigma must be in (0, {MAX_SIGMA:g}] (pixel units of [0, 1] images), "
                          f"got {opts.sigma:g}")
    if not 1 <= opts.n0 <= MAX_N:
        raise ConfigError(f"--n0 must be in [1, {MAX_N}], got {opts.n0}")
    if not 1 <= n <= MAX_N:
        raise ConfigError(f"--n must be in [1, {MAX_N}], got {n}")
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


class ModelResolver:
    """Loads registry models (or local files) by name, hash-checked, and remembers their hashes."""

    def __init__(self, registry: Registry, info, device, base_dir: Path, arch: str | None):
        self.registry, self.info, self.device = registry, info, device
        self.base_dir, self.arch = base_dir, arch
        self.hashes: dict[str, str] = {}

    def entry(self, name: str) -> dict[str, Any]:
        if name in self.registry.models:
            entry = dict(self.registry.models[name].fields)
            if self.arch and entry.get("arch") and entry["arch"] != self.arch:
                raise ConfigError(f"--arch {self.arch} contradicts model {name!r}'s arch "
                                  f"{entry['arch']}; drop --arch")
            return entry
        if Path(name).is_file():
            entry = {"source": "auto", "path": str(Path(name).resolve())}
            if self.arch:
                entry["arch"] = self.arch
            return entry
        raise ConfigError(
            f"--model {name!r} is neither a registered model nor an existing file; registered: "
            f"{', '.join(sorted(self.registry.models)) or 'none'}"
        )

    def trained_on(self, entry: Mapping[str, Any]):
        """The dataset whose statistics the model's input layer uses (a CIFAR-10 model keeps
        CIFAR-10's mean/std when certified on an imagefolder of CIFAR-like images)."""
        own = entry.get("dataset")
        if own and own != self.info.name and own in datasets.DATASET_NAMES \
                and own != "imagefolder":
            return datasets.dataset_info(own)
        return self.info

    def __call__(self, name: str) -> torch.nn.Module:
        entry = self.entry(name)
        net = load_network(name, entry, dataset=self.trained_on(entry), device=self.device,
                           base_dir=self.base_dir)
        self.hashes[name] = net.checkpoint_sha256
        return net


@dataclass
class Prepared:
    opts: RunOptions
    run_id: str
    card: dict[str, Any]
    smooth: Smooth
    dataset: datasets.CertDataset
    indices: list[int]
    grid: tuple[float, ...]
    device: torch.device
    n: int


def build_method(registry: Registry, name: str, overrides: Mapping[str, Any]) -> Method:
    entry = registry.method(name)
    cls = entry.load_adapter()
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"{entry.origin}: methods.{name}.adapter: {entry.adapter} is not a "
                          "bench.protocol.Method subclass")
    cls.id = cls.id or name
    params = {**entry.params, **overrides}
    return cls(**params)


def prepare(opts: RunOptions) -> Prepared:
    """Validate the request and load everything; no certification yet."""
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=datasets.DATASET_NAMES)
    entry = registry.method(opts.method)
    datasets.check_subset(opts.dataset, opts.subset)
    if opts.budget is not None and opts.n is not None:
        raise ConfigError("--budget sets N (= budget // m); drop --n or --budget")
    if opts.budget is not None and not 1 <= opts.budget <= MAX_N:
        raise ConfigError(f"--budget must be in [1, {MAX_N}] predictions per image, got "
                          f"{opts.budget}")
    n = opts.n if opts.n is not None else DEFAULT_N.get(opts.dataset, COHEN_N)
    check_sizes(opts, n)
    device = resolve_device(opts.device)
    config = dict(entry.dataset_config(opts.dataset))
    # Precedence: the method's params < the dataset's registry params < --param overrides.
    method = build_method(registry, opts.method,
                          {**(config.pop("params", None) or {}), **opts.params})
    ds = datasets.load_split(opts.dataset, "test", data_dir=opts.data_dir,
                             image_size=opts.image_size)
    indices = datasets.resolve_subset(opts.dataset, opts.subset, len(ds))
    resolver = ModelResolver(registry, ds.info, device, models_dir(opts.models_dir), opts.arch)
    ctx_params = dict(method.params)
    ctx = Context(dataset=ds.info, sigma=opts.sigma, device=device, seed=opts.seed,
                  params=ctx_params, config=config, model_override=opts.model,
                  model_loader=resolver)
    base = method.base_classifier(ctx)
    cost: Cost = getattr(base, "cost", Cost())
    if opts.budget is not None:
        n = budget_n(opts.budget, cost.m, opts.method)
    smooth = Smooth(base, ds.info.num_classes, opts.sigma)
    identity = {
        "protocol": PROTOCOL_VERSION,
        "method": opts.method,
        "adapter": entry.adapter,
        "params": _jsonable(ctx_params),
        "models": {name: resolver.hashes.get(name) for name in ctx.models_used},
        "dataset": opts.dataset,
        "data_fingerprint": ds.fingerprint,
        "subset": opts.subset,
        "subset_size": len(indices),
        "subset_hash": datasets.subset_hash(indices),
        "sigma": opts.sigma,
        "n0": opts.n0,
        "n": n,
        "m": cost.m,
        "alpha": opts.alpha,
        "seed": opts.seed,
        "noise": {"chunk": chunk_size(ds.info.shape),
                  "scheme": "torch.randn in whole chunks from a generator seeded by "
                            "SeedSequence([seed, idx, phase]); phases select=0 estimate=1"},
    }
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    card = {
        "run_id": run_id,
        "identity": identity,
        "budget": {"predictions_per_image": n * cost.m, "n0": opts.n0, "n": n, "m": cost.m,
                   "requested": opts.budget},
        "cost_per_sample": {"classifier_passes": cost.classifier_passes,
                            "diffusion_passes": cost.diffusion_passes},
        "radius_grid": list(datasets.radius_grid(opts.dataset)),
        "paper": dict(entry.paper),
        "environment": environment(device),
    }
    describe = getattr(base, "describe", None)
    if callable(describe):  # e.g. a denoiser's timestep, DiffSmooth's sigma/sigma' pairing
        card["base_classifier"] = _jsonable(describe())
    return Prepared(opts=opts, run_id=run_id, card=card, smooth=smooth, dataset=ds,
                    indices=indices, grid=datasets.radius_grid(opts.dataset), device=device, n=n)


def run(opts: RunOptions) -> RunResult:
    """Certify the requested images (skipping finished ones) and export the run's files."""
    prep = prepare(opts)
    store = store_mod.Store(opts.results)
    try:
        store.open_run(prep.run_id, prep.card)
        todo = select_todo(prep, store.done_indices(prep.run_id))
        device_name = describe_device(prep.device)
        bar = tqdm(todo, desc=f"{opts.method}/{opts.dataset} sigma={opts.sigma:g}",
                   unit="img", disable=not opts.progress, dynamic_ncols=True)
        samples = opts.n0 + prep.n
        for idx in bar:
            x, label = prep.dataset[idx]
            cert = prep.smooth.certify_record(x.to(prep.device), opts.n0, prep.n, opts.alpha,
                                              opts.batch, seed=opts.seed, index=idx)
            store.add_cert(prep.run_id, {
                "idx": idx, "label": int(label), "predict": cert.prediction,
                "radius": cert.radius, "correct": int(cert.prediction == int(label)),
                "time": cert.seconds, "top_class": cert.top_class, "count": cert.count,
                "n0": cert.n0, "n": cert.n, "p_lower": cert.p_lower,
                "classifier_passes": cert.classifier_passes,
                "diffusion_passes": cert.diffusion_passes, "device": device_name,
                "counts_select": cert.counts_select, "counts_estimate": cert.counts_estimate,
            })
            bar.set_postfix(samples_per_s=f"{samples / max(cert.seconds, 1e-9):,.0f}")
        folder, summary = export(store, prep.run_id, prep.indices)
        return RunResult(run_id=prep.run_id, folder=folder, summary=summary, new_images=len(todo))
    finally:
        store.close()


def budget_n(budget: int, m: int, method: str) -> int:
    """N for a budget of ``budget`` predictions per image at ``m`` predictions per sample."""
    if budget < m:
        raise ConfigError(f"--budget {budget} is smaller than {method}'s m = {m} predictions per "
                          f"noisy sample; use a budget of at least {m}")
    return budget // m


def select_todo(prep: Prepared, done: set[int]) -> list[int]:
    """This shard's images of the subset, minus finished ones, capped by --max-images."""
    i, k = prep.opts.shard
    mine = [idx for pos, idx in enumerate(prep.indices) if pos % k == i]
    if prep.opts.max_images is not None:
        mine = mine[: prep.opts.max_images]
    return [idx for idx in mine if idx not in done]


def summarize(card: Mapping[str, Any], certs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The protocol card plus metrics over the certified images of the subset."""
    grid = card["radius_grid"]
    radii = [c["radius"] for c in certs]
    correct = [c["correct"] for c in certs]
    count = len(certs)
    seconds = sum(c["time"] for c in certs)
    ident = card["identity"]
    samples = ident["n0"] + ident["n"]
    ca = metrics.certified_accuracy(radii, correct, grid)
    return {
        **card,
        "images": {"certified": count, "subset_size": ident["subset_size"],
                   "complete": count == ident["subset_size"]},
        "metrics": {
            "certified_accuracy": {f"{r:g}": v for r, v in ca.items()},
            "acr": metrics.average_certified_radius(radii, correct),
            "abstain_rate": metrics.abstain_rate([c["predict"] for c in certs]),
            # The largest radius any image can reach at this sigma, N and alpha.
            "max_certifiable_radius": stats.max_radius(ident["sigma"], ident["n"],
                                                       ident["alpha"]),
        },
        "cost_per_image": {
            "samples": samples,
            "classifier_passes": _mean(c["classifier_passes"] for c in certs),
            "diffusion_passes": _mean(c["diffusion_passes"] for c in certs),
            "seconds": seconds / count if count else float("nan"),
            "samples_per_second": samples * count / seconds if seconds else float("nan"),
            "devices": sorted({c["device"] for c in certs}),
        },
    }


def export(store: store_mod.Store, run_id: str, indices: list[int]) -> tuple[Path, dict]:
    """Write certs.tsv and summary.json for a run from the store."""
    card = store.run_card(run_id)
    certs = store.certs(run_id, indices)
    folder = store_mod.run_folder(store.root, card)
    store_mod.write_tsv(folder / "certs.tsv", certs)
    summary = summarize(card, certs)
    store_mod.write_json(folder / "summary.json", summary)
    return folder, summary


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    return {"certbench": bench.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": describe_device(device)}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True))
    except TypeError as exc:
        raise ConfigError(f"method params must be plain values ({exc})") from None
