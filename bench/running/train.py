"""``python -m bench train``: load the data, hand a seeded TrainContext to the method's adapter.

The adapter writes weights plus a model card; this module adds the registry entry a user
pastes into ``registry.yaml`` (with the file's sha256) so the new model can be certified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.contract import TrainContext
from bench.data import loaders, specs
from bench.errors import ConfigError
from bench.nets import load_network
from bench.nets.loaders import ZOO_DIR
from bench.params import check_sigma
from bench.registry.download import models_dir
from bench.registry.entries import Registry, load_registry
from bench.running.devices import resolve_device


@dataclass
class TrainOptions:
    method: str = "gaussian"
    dataset: str = "digits"
    sigma: float = 0.25
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    arch: str | None = None
    recipe: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # method params (--param KEY=VALUE)
    seed: int = 0
    device: str = "auto"
    data_dir: Path | None = None
    out: Path | None = None
    name: str | None = None
    init: str | None = None  # a registered classifier to fine-tune from
    train_images: int | None = None  # the first N training images only
    test_images: int | None = None  # the card's accuracies on the first N test images only
    progress: bool = True
    registry: Path | None = None
    extra_registries: tuple[Path, ...] = ()
    command: str = ""


def train(opts: TrainOptions) -> dict[str, Any]:
    registry = load_registry(opts.registry, extra=opts.extra_registries,
                             datasets=loaders.DATASET_NAMES)
    check_sigma(opts.sigma)
    method = registry.method(opts.method).instantiate(opts.dataset, opts.params)
    if not method.supports_training():
        raise ConfigError(f"method {opts.method!r} has nothing to train; trainable methods: "
                          + ", ".join(sorted(_trainable(registry))))
    if opts.seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {opts.seed}")
    for flag, value in (("--epochs", opts.epochs), ("--batch", opts.batch),
                        ("--train-images", opts.train_images),
                        ("--test-images", opts.test_images)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if opts.lr is not None and not opts.lr > 0:
        raise ConfigError(f"--lr must be positive, got {opts.lr:g}")
    device = resolve_device(opts.device)
    data = specs.spec(opts.dataset)  # once: the loaders and the default arch read the object
    train_set = loaders.load_split(data, "train", data_dir=opts.data_dir)
    test_set = loaders.load_split(data, "test", data_dir=opts.data_dir)
    out_dir = Path(opts.out) if opts.out else ZOO_DIR
    ctx = TrainContext(
        dataset=train_set.info, sigma=opts.sigma, device=device, seed=opts.seed,
        train=_first(train_set.tensors(), opts.train_images),
        test=_first(test_set.tensors(), opts.test_images),
        out_dir=out_dir, name=opts.name,
        options={"epochs": opts.epochs, "batch": opts.batch, "lr": opts.lr, "arch": opts.arch,
                 "recipe": opts.recipe, "init": _init_model(registry, opts.init)},
        progress=opts.progress, command=opts.command,
        default_arch=data.default_arch, reference_augment=data.reference_augment,
        registered_model=lambda name: _registered_model(registry, name, train_set.info, device),
    )
    card = method.train(ctx)
    card["registry_entry"] = registry_entry(card, opts)
    return card


def registry_entry(card: dict[str, Any], opts: TrainOptions) -> dict[str, Any]:
    """The ``models:`` entry for what was just trained: a zoo/state-dict file, or a diffusers
    folder (a denoiser), which has no classifier arch."""
    weights = Path(card["weights"])
    in_zoo = weights.resolve().parent == ZOO_DIR
    path = weights.name if in_zoo else str(weights)
    if weights.is_dir():
        entry = {"source": "diffusers", "path": path}
    else:
        entry = {"arch": card["arch"], "source": "zoo" if in_zoo else "state_dict", "path": path,
                 "sigma": opts.sigma}  # a denoiser folder serves every sigma: no sigma
    return {**entry, "sha256": card["sha256"], "dataset": opts.dataset,
            "trained_by": opts.method, "trained_with": opts.command}


def _registered_model(registry: Registry, name: str, info, device):
    """A registered model by name, hash-checked (e.g. the classifier judging a denoiser)."""
    return load_network(name, registry.model(name).fields, dataset=info, device=device,
                        base_dir=models_dir())


def _first(tensors, n: int | None):
    """The first ``n`` training examples (all when ``n`` is None)."""
    return tensors if n is None else tuple(t[:n] for t in tensors)


def _init_model(registry: Registry, name: str | None) -> dict[str, Any] | None:
    """--init resolved to the registered classifier's name and sha256 (checked on load)."""
    if name is None:
        return None
    fields = registry.model(name).fields
    if fields.get("source") == "diffusers" or not fields.get("arch"):
        raise ConfigError(f"--init {name}: not a classifier with an arch; pass a registered "
                          "classifier (see 'python -m bench list --models')")
    return {"name": name, "arch": str(fields["arch"]), "sha256": fields.get("sha256")}


def _trainable(registry: Registry) -> list[str]:
    out = []
    for name, entry in registry.methods.items():
        try:
            if entry.instantiate().supports_training():
                out.append(name)
        except ConfigError:
            continue
    return out
