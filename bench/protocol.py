"""The method contract.

A method is a way to build a *base classifier* ``f``: a callable that maps a batch of noisy
images (float, [0, 1] pixel units plus the harness's Gaussian noise) to integer labels. The
harness owns the noise, the sampling, the statistics and the bookkeeping; a method only builds
``f`` (and, optionally, trains the networks behind it). This is the only harness module an
adapter needs besides :mod:`bench.errors` and :mod:`bench.nets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from bench.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about a dataset without loading it."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W) of the images the harness feeds
    num_classes: int
    mean: tuple[float, ...]  # per-channel statistics for an input normalization layer
    std: tuple[float, ...]

    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w


@dataclass(frozen=True)
class Cost:
    """Forward passes one base-classifier call spends per noisy sample.

    ``m`` is the number of inner predictions per sample (DiffSmooth's local noise draws);
    the budget of a run is N x m predictions per image.
    """

    m: int = 1
    classifier_passes: int = 1
    diffusion_passes: int = 0


@runtime_checkable
class BaseClassifier(Protocol):
    """A callable on a batch of noisy images returning labels, with its declared cost."""

    num_classes: int
    cost: Cost

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B,) int64
        ...


class LogitClassifier:
    """Turns a network that returns logits into a :class:`BaseClassifier`.

    Rows with a non-finite logit get the sentinel label ``num_classes``: the harness counts
    them in an extra bin and reports a model error, without a host sync per batch.
    """

    def __init__(self, net: torch.nn.Module, num_classes: int, cost: Cost | None = None):
        self.net = net.eval()
        self.num_classes = num_classes
        self.cost = cost or Cost()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return labels_from_logits(logits, self.num_classes)


def labels_from_logits(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Argmax labels; the sentinel ``num_classes`` marks rows with NaN or inf."""
    labels = logits.argmax(dim=1)
    finite = torch.isfinite(logits.sum(dim=1))  # a row sum is NaN/inf iff a logit is
    return torch.where(finite, labels, torch.full_like(labels, num_classes))


@dataclass
class Context:
    """Everything an adapter may use to build its base classifier for one run."""

    dataset: DatasetInfo
    sigma: float
    device: torch.device
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    # The method's per-dataset block of the registry (e.g. {"classifier": {0.25: "model-name"}}).
    config: Mapping[str, Any] = field(default_factory=dict)
    # A model name or local file given on the command line that replaces the registry's choice.
    model_override: str | None = None
    # Resolves a model name (or path) to a loaded, eval-mode network on ``device``.
    model_loader: Callable[[str], torch.nn.Module] | None = None
    # Names of the models this run used, for the protocol card (filled by load_model).
    models_used: list[str] = field(default_factory=list)

    def load_model(self, name: str) -> torch.nn.Module:
        if self.model_loader is None:
            raise ConfigError("no model loader is configured for this run")
        net = self.model_loader(name)
        if name not in self.models_used:
            self.models_used.append(name)
        return net

    def model_for_sigma(self, key: str, method: str) -> str:
        """The model registered under ``config[key]`` for this run's sigma (or the override).

        ``config[key]`` is either one model name or a mapping sigma -> model name.
        """
        if self.model_override:
            return self.model_override
        choice = self.config.get(key)
        if choice is None:
            raise ConfigError(
                f"method {method!r} has no {key!r} model for dataset {self.dataset.name!r}; "
                f"add one under methods.{method}.datasets.{self.dataset.name}.{key} in the "
                "registry or pass --model NAME_OR_PATH"
            )
        if isinstance(choice, str):
            return choice
        for sig, name in choice.items():
            if abs(float(sig) - self.sigma) < 1e-9:
                return name
        have = ", ".join(str(s) for s in sorted(float(s) for s in choice))
        raise ConfigError(
            f"method {method!r} has no {key} model for {self.dataset.name} at sigma {self.sigma:g} "
            f"(registered sigmas: {have}); pick one of those, train one with "
            f"'python -m bench train --method {method} --dataset {self.dataset.name} "
            f"--sigma {self.sigma:g}', or pass --model NAME_OR_PATH"
        )


class Method:
    """Base class of method adapters, constructed from the registry entry's params.

    Subclasses implement :meth:`base_classifier`; training-based methods also implement
    :meth:`train`. Params not declared by the subclass in ``defaults`` are rejected.
    """

    id: str = ""
    defaults: Mapping[str, Any] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"method {self.id!r} got unknown param(s) {', '.join(unknown)}; allowed: {allowed}"
            )
        self.params = {**self.defaults, **params}

    def base_classifier(self, ctx: Context) -> BaseClassifier:
        raise NotImplementedError

    def supports_training(self) -> bool:
        return type(self).train is not Method.train

    def train(self, ctx: Context, options: Mapping[str, Any]) -> Any:
        raise ConfigError(f"method {self.id!r} has nothing to train")


@dataclass
class TrainContext:
    """What a training-based method gets from ``python -m bench train``."""

    dataset: DatasetInfo
    sigma: float
    device: torch.device
    seed: int
    train: tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) in [0, 1], labels (N,)
    test: tuple[torch.Tensor, torch.Tensor]
    out_dir: Any  # pathlib.Path where weights and the model card go
    name: str | None  # the model name (file stem) to write; None derives one
    options: Mapping[str, Any] = field(default_factory=dict)  # epochs, batch, lr, arch, ...
    progress: bool = True
    command: str = ""  # the command line, recorded in the model card

    def model_name(self, method: str, arch: str, *, with_sigma: bool = True) -> str:
        """The given name, or ``<dataset>-<arch family>-<method>[-<sigma>]`` (no sigma for a
        model trained without noise)."""
        if self.name:
            return self.name
        family = arch.replace("_", "-").removeprefix(f"{self.dataset.name}-")
        name = f"{self.dataset.name}-{family}-{method}"
        return f"{name}-{self.sigma:g}" if with_sigma else name
