"""Base classifiers whose smoothed certificate is known in closed form (golden tests).

* ``constant``: f(x) = label. Every estimation sample agrees, so the radius is exactly
  sigma * PhiInv(alpha^(1/N)), the largest certifiable radius.
* ``linear``: f(x) = classes[1] if u.x > t else classes[0], with a unit vector u (one pixel,
  or the normalised all-ones direction for ``direction: mean``). Then p_A = Phi(|u.x - t| /
  sigma) and the exact robust radius of the smoothed classifier is the distance |u.x - t| to
  the hyperplane; CERTIFY's radius approaches it from below as N grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from bench.contract import Context, Cost, DatasetInfo, Method
from bench.errors import ConfigError
from bench.params import Param

KINDS = ("constant", "linear")


class Dummy(Method):
    id = "dummy"
    PARAMS: Mapping[str, Param] = {
        "kind": Param("constant", str, choices=KINDS, doc="constant or linear"),
        "label": Param(0, int, low=0, doc="the constant classifier's label"),
        "direction": Param("mean", str, choices=("pixel", "mean"),
                           doc="the linear classifier's normal: one pixel or all-ones"),
        "pixel": Param(0, int, low=0, doc="the pixel of direction 'pixel'"),
        "threshold": Param(None, float, optional=True,
                           doc="u.x threshold (default: half of u's sum)"),
        "classes": Param([0, 1], list, doc="labels below / above the hyperplane"),
    }

    def base_classifier(self, ctx: Context):
        p = self.params
        k = ctx.dataset.num_classes
        if p["kind"] == "constant":
            if not 0 <= int(p["label"]) < k:
                raise ConfigError(f"dummy: label must be in [0, {k}), got {p['label']}")
            return ConstantClassifier(int(p["label"]), k)
        lo, hi = (int(c) for c in p["classes"])
        if not (0 <= lo < k and 0 <= hi < k):
            raise ConfigError(f"dummy: classes must be in [0, {k}), got {p['classes']}")
        u, t = linear_direction(ctx.dataset, p["direction"], int(p["pixel"]), p["threshold"])
        return LinearClassifier(u.to(ctx.device), t, lo, hi, k)


def linear_direction(info: DatasetInfo, direction: str, pixel: int, threshold):
    """The unit normal u and offset t of the dummy hyperplane u.x = t."""
    d = info.dim
    if direction == "pixel":
        if not 0 <= pixel < d:
            raise ConfigError(f"dummy: pixel must be in [0, {d}), got {pixel}")
        u = torch.zeros(d)
        u[pixel] = 1.0
    elif direction == "mean":
        u = torch.full((d,), 1.0 / math.sqrt(d))
    else:
        raise ConfigError(f"dummy: direction must be 'pixel' or 'mean', got {direction!r}")
    t = float(threshold) if threshold is not None else 0.5 * float(u.sum())
    return u, t


class ConstantClassifier:
    cost = Cost()

    def __init__(self, label: int, num_classes: int):
        self.label, self.num_classes = label, num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.label, dtype=torch.long, device=x.device)


class LinearClassifier:
    cost = Cost()

    def __init__(self, u: torch.Tensor, t: float, lo: int, hi: int, num_classes: int):
        self.u, self.t, self.lo, self.hi, self.num_classes = u, t, lo, hi, num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        above = x.reshape(x.shape[0], -1) @ self.u > self.t
        return torch.where(above, self.hi, self.lo).long()

    def distance(self, x: torch.Tensor) -> float:
        """The exact certified radius of the smoothed classifier at x."""
        return abs(float(x.reshape(-1) @ self.u.to(x.device)) - self.t)
