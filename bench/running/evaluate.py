"""One call from Python: certify your own model through the harness the CLI uses.

:func:`evaluate` is ``python -m bench run`` for an in-memory model: the same
:class:`bench.running.plan.RunOptions`, :func:`bench.running.plan.prepare` (validation, once)
and :func:`bench.running.runner.run_prepared` (the store, resume by run id, exports under
``<results>/runs/<folder>/``), with the model given to the run's
``classifier`` role (``RunOptions.python_models``). The card names it ``python:<ClassName>`` with
the sha256 of its parameters and buffers (:func:`bench.running.roles.python_model_sha256`), and that
hash is part of the run id: another set of weights is another run, the same weights resume.

The harness owns the noise: the model is called on batches of noisy copies ``x + sigma * z``
of images in [0, 1] pixel units (sigma and the radii are in those units). Any normalization
(mean/std) is the model's own job, inside its ``forward``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.contract import ClassifierMethod
from bench.data import loaders, specs
from bench.errors import ConfigError
from bench.registry.entries import load_registry
from bench.reports.frames import runs_frame
from bench.reports.rows import row_from_summary
from bench.running.plan import Prepared, RunOptions, prepare
from bench.running.roles import PYTHON_PREFIX, PythonModel
from bench.running.runner import RunResult, run_prepared

DEFAULT_METHOD = "gaussian"  # its base classifier is the classifier's argmax: Cohen's
# RunOptions fields evaluate sets itself (its arguments) or that would bypass the model given
_OWN = frozenset({"method", "dataset", "sigma", "n", "n0", "alpha", "subset", "max_images",
                  "batch", "seed", "results", "device", "data_dir", "radii", "certification",
                  "python_models", "model", "progress"})


def evaluate(model, dataset: str = "cifar10", *, sigma: float = 0.25, n: int = 100_000,
             n0: int = 100, alpha: float = 0.001, subset: str = "full",
             max_images: int | None = None, batch: int = 1024, seed: int = 0,
             results: str | Path = "results", device: str = "auto",
             num_classes: int | None = None, method_name: str | None = None,
             data_dir: str | Path | None = None,
             radii: Sequence[float] | str | None = None, certification: str = "fixed",
             progress: bool = True, **options: Any) -> pd.DataFrame:
    """Certify ``model`` on ``dataset`` (Cohen's CERTIFY, or ``certification="sequential"``) and
    return the run's table row.

    ``model``: an ``nn.Module`` returning logits (B, K), or any callable returning labels
    (B,) (tensor, numpy array or list). It gets noisy images in [0, 1] (normalize inside it),
    is moved to ``device`` and put in eval mode for the run (its training mode is restored
    after; it stays on ``device``).

    The arguments are the CLI's (``--n``, ``--n0``, ``--alpha``, ``--subset``,
    ``--max-images``, ``--batch``, ``--seed``, ``--results``, ``--device``, ``--data-dir``,
    ``--radii``, ``--certification``, whose first name ``protocol=`` still works); any other
    :class:`bench.running.plan.RunOptions` field may be given by name in ``options`` (e.g.
    ``image_size=``, ``label_aware=``, ``params=``).
    ``num_classes``: the classes the model predicts (None: the dataset's; a class-folder tree
    is read to fit it). ``method_name``: the registry method whose base classifier wraps the
    model and whose name the run is filed under (default ``gaussian``: the classifier's
    argmax; e.g. ``dds`` puts the model behind the registry's denoiser).

    Returns a one-row DataFrame with the columns of ``bench.load_results(level="runs")``
    (:func:`bench.reports.frames.runs_frame`: run_id, kind, method, dataset, sigma, ..., n0, n,
    alpha, subset, subset_size, images, ..., acr, abstain (a fraction), ..., then ``acc@R``,
    certified accuracy as a fraction per radius of the run's grid; the model's name and hash
    are in the card's ``model_roles``). ``df.attrs`` holds ``run_id``, ``folder`` (the
    export folder), ``new_images``, ``summary`` (:class:`bench.certify.records.RunSummary`) and
    ``result`` (:class:`bench.running.runner.RunResult`). Calling it again with the same model
    and arguments resumes the run (nothing is certified twice).
    """
    if "protocol" in options:  # certification's first name
        certification = options.pop("protocol")
    if not callable(model):
        raise ConfigError(f"model must be an nn.Module or a callable, got "
                          f"{type(model).__name__}")
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(RunOptions)})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; see "
                          "bench.running.plan.RunOptions")
    clash = sorted(set(options) & _OWN)
    if clash:
        raise ConfigError(f"option(s) {', '.join(clash)} are evaluate's own arguments or "
                          "replace the model given")
    data = specs.spec(dataset)  # once: prepare gets the object
    if num_classes is not None and not loaders.reads_tree(data):
        have = loaders.placeholder_info(data).num_classes
        if num_classes != have:
            raise ConfigError(f"the model predicts {num_classes} classes but {dataset} has "
                              f"{have}")
    opts = RunOptions(
        method=method_name or DEFAULT_METHOD, dataset=dataset, sigma=sigma, n=n, n0=n0,
        alpha=alpha, subset=subset, max_images=max_images, batch=batch, seed=seed,
        results=Path(results), device=device,
        data_dir=Path(data_dir) if data_dir is not None else None,
        radii=radii if radii is None or isinstance(radii, str) else tuple(map(float, radii)),
        certification=certification, progress=progress,
        python_models={"classifier": PythonModel(model, num_classes=num_classes)}, **options)
    training = model.training if isinstance(model, torch.nn.Module) else None
    try:
        prep = prepare(opts, data)  # once: its card says whether the model given is certified
        if not _asks_classifier(prep):
            raise ConfigError(f"method {opts.method!r} does not use a classifier model on "
                              f"{dataset}: the model given would not be certified")
        result = run_prepared(prep)
    finally:
        if training is not None:
            model.train(training)
    return _frame(result)


def _asks_classifier(prep: Prepared) -> bool:
    """Whether the prepared run certifies the model given: any ClassifierMethod does; another
    method does where its card records the model given in the classifier role."""
    opts = prep.opts
    entry = load_registry(opts.registry, extra=opts.extra_registries,
                          datasets=loaders.DATASET_NAMES).method(opts.method)
    if isinstance(cls := entry.load_adapter(), type) and issubclass(cls, ClassifierMethod):
        return True
    roles = prep.card.extra.get("model_roles", {})
    return str(roles.get("classifier", {}).get("name", "")).startswith(PYTHON_PREFIX)


def _frame(result: RunResult) -> pd.DataFrame:
    """The run's one row: :func:`bench.reports.frames.runs_frame` of its stored summary (the
    columns of ``load_results``), with the run and its summary in ``df.attrs``."""
    s = result.summary
    df = runs_frame([row_from_summary(s)], s.card.radius_grid)
    df.attrs.update(run_id=result.run_id, folder=result.folder, new_images=result.new_images,
                    summary=s, result=result)
    return df
