"""The method contract.

A method is a way to build a *base classifier* ``f``: a callable that maps a batch of noisy
images (float, [0, 1] pixel units plus the harness's Gaussian noise) to integer labels. The
harness owns the noise, the sampling, the statistics and the bookkeeping; a method only builds
``f`` (and, optionally, trains the networks behind it), asking the :class:`Context` for its
models by role. An adapter imports only ``bench`` (this module, :mod:`bench.params`,
:mod:`bench.errors`, :mod:`bench.nets`, :mod:`bench.diffusion`, :mod:`bench.training`), never
another adapter, and never computes a bound: that is the certification procedure's job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from bench.data.specs import DatasetInfo
from bench.errors import ConfigError, ModelError
from bench.params import Param, bind


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
        if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = (f"shape {tuple(logits.shape)}" if torch.is_tensor(logits)
                   else type(logits).__name__)
            raise ModelError(f"the network returned {got} for a batch of {x.shape[0]} images; "
                             f"return logits ({x.shape[0]}, K)")
        return labels_from_logits(logits, self.num_classes)


def labels_from_logits(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Argmax labels; the sentinel ``num_classes`` marks rows with NaN or inf."""
    labels = logits.argmax(dim=1)
    finite = torch.isfinite(logits.sum(dim=1))  # a row sum is NaN/inf iff a logit is
    return torch.where(finite, labels, torch.full_like(labels, num_classes))


@dataclass(frozen=True)
class ModelRef:
    """A model a run used: its registry name (or path), sha256 and registry fields."""

    role: str
    name: str
    sha256: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)


class ModelSource(Protocol):
    """Resolves a role (``classifier``, ``denoiser``, ...) to a loaded, hash-checked model.

    The harness's implementation (:class:`bench.running.roles.RoleResolver`) applies the registry's
    per-dataset choice (one name or a sigma map) and the command line's ``--model`` once.
    """

    def load(self, role: str, override: str | None = None) -> torch.nn.Module: ...

    def ref(self, role: str) -> ModelRef: ...


@dataclass
class Context:
    """Everything an adapter may use to build its base classifier for one run."""

    dataset: DatasetInfo
    sigma: float
    device: torch.device
    seed: int = 0
    models: ModelSource | None = None

    def model(self, role: str, *, override: str | None = None) -> torch.nn.Module:
        """The model this run uses in ``role``, loaded on the device in eval mode; its name and
        sha256 go into the run's card. ``override`` (e.g. a method param naming a denoiser)
        replaces the registry's choice."""
        if self.models is None:
            raise ConfigError("no model source is configured for this run")
        return self.models.load(role, override)

    def model_ref(self, role: str) -> ModelRef:
        """Name, sha256 and registry fields of the model loaded for ``role``."""
        if self.models is None:
            raise ConfigError("no model source is configured for this run")
        return self.models.ref(role)


class Method:
    """Base class of method adapters, constructed from the registry entry's params.

    Subclasses declare their params once in ``PARAMS`` (:class:`bench.params.Param`) and
    implement :meth:`base_classifier`; training-based methods also implement :meth:`train`.
    """

    id: str = ""
    PARAMS: Mapping[str, Param] = {}

    def __init__(self, **params: Any):
        self.params = bind(self.id or type(self).__name__, self.PARAMS,
                           [(f"method {self.id!r} param ", params)])

    def base_classifier(self, ctx: Context) -> BaseClassifier:
        raise NotImplementedError

    @classmethod
    def m_param(cls) -> str | None:
        """The declared param that sets the predictions per noisy sample (the budget's m),
        if any: ``Param(..., sets_m=True)``, e.g. DiffSmooth's m."""
        return next((name for name, p in cls.PARAMS.items() if p.sets_m), None)

    def supports_training(self) -> bool:
        return type(self).train is not Method.train

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        raise ConfigError(f"method {self.id!r} has nothing to train")


class ClassifierMethod(Method):
    """A method whose base classifier is one network's argmax: the run's ``classifier`` model
    (Gaussian, SmoothAdv, MACER, consistency and clean differ only in how it was trained)."""

    def base_classifier(self, ctx: Context) -> BaseClassifier:
        return LogitClassifier(ctx.model("classifier"), ctx.dataset.num_classes)


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
    default_arch: str | None = None  # the dataset spec's architecture for training from scratch
    reference_augment: str = "none"  # the dataset spec's augmentation of reference recipes
    # Loads a registered model by name (hash-checked), e.g. a reference classifier to evaluate
    # a trained denoiser; None when no registry is at hand.
    registered_model: Callable[[str], torch.nn.Module] | None = None

    def arch(self) -> str:
        """--arch, else the dataset's default architecture."""
        arch = self.options.get("arch") or self.default_arch
        if not arch:
            raise ConfigError(f"no default architecture to train on {self.dataset.name}; "
                              "pass --arch NAME")
        return str(arch)

    def model_name(self, method: str, arch: str, *, with_sigma: bool = True) -> str:
        """The given name, or ``<dataset>-<arch family>-<method>[-<sigma>]`` (no sigma for a
        model trained without noise)."""
        if self.name:
            return self.name
        family = arch.replace("_", "-").removeprefix(f"{self.dataset.name}-")
        name = f"{self.dataset.name}-{family}-{method}"
        return f"{name}-{self.sigma:g}" if with_sigma else name
