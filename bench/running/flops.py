"""Forward FLOPs of a run's base classifier, measured once per run and cached.

Why: a prediction is not a unit of compute. A DDS prediction is a UNet pass and a classifier
pass, a DiffSmooth one adds m classifier passes, an NDC one is classes x grid UNet passes. The
run card records what one base-classifier call on one noisy input costs (``compute``, outside
the identity, so run ids never change), and every certificate and summary derives its FLOPs
from it (:func:`bench.certify.records.certificate_flops`).

How: ``torch.utils.flop_counter.FlopCounterMode`` around one call of the base classifier on
``FLOP_BATCH`` constant images of the run's shape (mid-gray 0.5: the counted operations do
not depend on pixel values). It counts matrix products, convolutions and attention (a
multiply-add is 2 FLOPs), not elementwise work, normalisation or softmax. Forward hooks on each
role's module and its submodules (the models the run loaded by role; a method may call a
wrapped network directly, as NDC calls ``model.net``) split the total by role, the outermost
role module running taking the count; counted work outside every role's module, if any, is
the role ``other``.

Noise: the input is constant, never a noisy sample, so no harness noise stream is drawn. A
base classifier with randomness of its own (NDC's eps, DiffSmooth's fresh local draws) is
restarted at the probe phase first (:data:`bench.certify.procedures.base.PROBE_PHASE`, run seed
0, image 0), as the runner's model probe does: those draws are in no certificate, and each
certified phase restarts the stream anyway.

Cache: the figure depends on the models (their sha256), the method and its params, sigma, the
input shape and torch; keyed by the sha256 of those, it is kept in ``<results>/`` as
:data:`CACHE_NAME`, so a resumed run, a shard or a Ray worker does not count again.

Caveat: NDC's sift-and-refine (more classes than ``sift_keep``) scores a data-dependent number
of classes; on the constant input the count is that of the classes surviving there. Digits,
Fashion-MNIST and CIFAR-10 have 10 classes and never sift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.certify.procedures.base import PROBE_PHASE
from bench.certify.records import canonical_json
from bench.store.database import atomic_write

FLOP_BATCH = 1  # images per measured call: FLOPs per prediction need no division
CACHE_NAME = "flops-cache.json"
CACHE_VERSION = 1
OTHER_ROLE = "other"  # counted work outside every role's module


def method_text(shape: tuple[int, ...]) -> str:
    """How the figure was measured (the card's ``compute.method``)."""
    dims = "x".join(str(int(d)) for d in shape)
    return (f"torch.utils.flop_counter.FlopCounterMode, batch {FLOP_BATCH}, input shape "
            f"{dims} (constant 0.5), torch {torch.__version__}")


def measure_call(base, roles: Mapping[str, torch.nn.Module], shape: tuple[int, ...],
                 device: torch.device | str) -> dict[str, Any]:
    """FLOPs of one call of ``base`` on one image of ``shape``, in total and per role
    (``roles``: role -> the module the run loaded for it)."""
    begin = getattr(base, "begin_phase", None)
    if callable(begin):  # its own randomness: the probe's stream, in no certificate
        begin(0, 0, PROBE_PHASE)
    x = torch.full((FLOP_BATCH, *shape), 0.5, device=device)
    counter = FlopCounterMode(display=False)
    per_role = {role: 0 for role in roles}
    depth = [0]  # role modules being run: only the outermost one is counted
    start: dict[str, int] = {}

    def before(role: str):
        def hook(_module, _args):
            if depth[0] == 0:
                start[role] = counter.get_total_flops()
            depth[0] += 1
        return hook

    def after(role: str):
        def hook(_module, _args, _out):
            depth[0] -= 1
            if depth[0] == 0 and role in start:
                per_role[role] += counter.get_total_flops() - start.pop(role)
        return hook

    owner: dict[int, tuple[str, torch.nn.Module]] = {}
    for role, module in roles.items():
        if isinstance(module, torch.nn.Module):  # its submodules too: NDC calls model.net
            for sub in module.modules():
                owner.setdefault(id(sub), (role, sub))
    handles = []
    for role, sub in owner.values():
        handles += [sub.register_forward_pre_hook(before(role)),
                    sub.register_forward_hook(after(role))]
    try:
        with torch.inference_mode(), counter:
            base(x)
    finally:
        for handle in handles:
            handle.remove()
    total = counter.get_total_flops()
    rest = total - sum(per_role.values())
    if rest > 0:
        per_role[OTHER_ROLE] = rest
    return {"flops_per_prediction": _per_image(total),
            "roles": {role: _per_image(v) for role, v in per_role.items()}}


def _per_image(flops: int) -> int | float:
    """FLOPs per image of the batch: an integer whenever it divides evenly."""
    whole, rest = divmod(int(flops), FLOP_BATCH)
    return whole if rest == 0 else flops / FLOP_BATCH


def compute_block(procedure, roles: Mapping[str, torch.nn.Module], shape: tuple[int, ...],
                  device: torch.device | str) -> dict[str, Any]:
    """The card's ``compute``: FLOPs per prediction (one base-classifier call on one noisy
    input, all roles summed) and per role. A multi-stage procedure (the cascade) measures each
    stage's base classifier; when they differ, ``stages`` lists each (sigma, figures) and the
    top-level figure is the largest."""
    bases = list(getattr(procedure, "bases", None) or [procedure.base])
    measured = [measure_call(b, roles, shape, device) for b in bases]
    block = {**measured[0], "method": method_text(shape)}
    if any(m != measured[0] for m in measured[1:]):
        scales = list(getattr(procedure, "scales", range(len(bases))))
        block["stages"] = [{"sigma": s, **m} for s, m in zip(scales, measured, strict=True)]
        top = max(measured, key=lambda m: m["flops_per_prediction"])
        block.update(flops_per_prediction=top["flops_per_prediction"], roles=top["roles"])
    return block


def cache_key(identity: Mapping[str, Any], shape: tuple[int, ...], num_classes: int,
              procedure: str) -> str | None:
    """What the figure depends on, hashed: models (sha256), method, adapter, params, sigma,
    procedure, input shape and classes, the batch measured and torch. None when a model has
    no sha256 (nothing to key it by)."""
    models = identity.get("models") or {}
    if any(v is None for v in models.values()):
        return None
    fields = {"version": CACHE_VERSION, "models": models, "method": identity.get("method"),
              "adapter": identity.get("adapter"), "params": identity.get("params"),
              "sigma": identity.get("sigma"), "procedure": procedure,
              "shape": [int(d) for d in shape], "num_classes": int(num_classes),
              "batch": FLOP_BATCH, "torch": torch.__version__}
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


class FlopCache:
    """Measured ``compute`` blocks by :func:`cache_key`, in one JSON file. Read when first
    asked; :meth:`save` writes new entries (merged with what another process wrote meanwhile,
    replacing the file atomically) and only into an existing folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries: dict[str, Any] | None = None
        self._new: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or damaged: measured again
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str | None) -> dict[str, Any] | None:
        if key is None:
            return None
        if self._entries is None:
            self._entries = self._read()
        found = self._new.get(key) or self._entries.get(key)
        return dict(found) if isinstance(found, dict) else None

    def put(self, key: str | None, block: Mapping[str, Any]) -> None:
        if key is not None:
            self._new[key] = dict(block)

    def save(self) -> None:
        if not self._new or not self.path.parent.is_dir():
            return
        entries = {**self._read(), **self._new}
        atomic_write(self.path, json.dumps(entries, indent=1, sort_keys=True))
        self._entries, self._new = entries, {}


def measure(procedure, roles: Mapping[str, torch.nn.Module], identity: Mapping[str, Any],
            shape: tuple[int, ...], num_classes: int, device: torch.device | str,
            cache: FlopCache | None = None) -> dict[str, Any]:
    """The run's ``compute`` block: from ``cache`` when it holds this configuration, else
    measured (:func:`compute_block`) and put in the cache."""
    key = cache_key(identity, shape, num_classes, procedure.name)
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return found
    block = compute_block(procedure, roles, shape, device)
    if cache is not None:
        cache.put(key, block)
    return block
