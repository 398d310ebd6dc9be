"""Method params, typed once: each adapter declares ``PARAMS = {name: Param(...)}`` and every
entry point (registry params, per-dataset params, ``--param`` on run/compare/train, validate)
checks values against that one declaration, with an error naming where the value came from.

The sigma range is checked here and nowhere else (:func:`check_sigma`). No torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError

MAX_SIGMA = 10.0  # noise std in [0, 1] pixel units; 10 already buries any image


def check_sigma(value: Any, where: str = "--sigma", *, allow_zero: bool = False) -> float:
    """A noise level in [0, 1] pixel units: (0, 10], or [0, 10] for a model trained without
    noise. The one place the range is enforced."""
    low = "[0" if allow_zero else "(0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{where} must be a number in {low}, {MAX_SIGMA:g}] (pixel units of "
                          f"[0, 1] images), got {value!r}")
    ok = (0 <= value if allow_zero else 0 < value) and value <= MAX_SIGMA
    if not ok:
        raise ConfigError(f"{where} must be in {low}, {MAX_SIGMA:g}] (pixel units of [0, 1] "
                          f"images), got {value:g}")
    return float(value)


def check_sigmas(value: Any, where: str) -> list[float]:
    """Distinct noise levels, each checked by :func:`check_sigma`, sorted ascending; a single
    number is one level (``--param scales=0.5`` needs no trailing comma)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{where}: expected noise levels such as 0.25,0.5,1.0, got "
                              f"{value!r}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of noise levels such as "
                          f"[0.25, 0.5, 1.0], got {value!r}")
    levels = sorted(check_sigma(v, where) for v in value)
    if len(set(levels)) != len(levels):
        raise ConfigError(f"{where}: noise levels must be distinct, got {value!r}")
    return levels


@dataclass(frozen=True)
class Param:
    """One declared param: its default, type and allowed values.

    ``kind``: int, float (ints accepted), bool, str or list; ``optional``: None is allowed;
    ``sigma``: a noise level checked by :func:`check_sigma`; ``sigmas``: a set of distinct noise
    levels (a list, or ``0.25,0.5`` from the command line), kept sorted ascending so the run id
    does not depend on how they were written; ``sets_m``: this param is the
    number of predictions the base classifier makes per noisy sample (DiffSmooth's local draws),
    so it sets the certification cost and ``compare`` expands it over ``--m``. A training-only
    m (SmoothAdv's or consistency's noise copies per example) leaves it False.
    """

    default: Any
    kind: type = str
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    sigma: bool = False
    sets_m: bool = False
    sigmas: bool = False

    def check(self, value: Any, where: str) -> Any:
        """The value as this param's type, or a ConfigError naming ``where``."""
        if value is None and self.optional:
            return None
        if self.sigma:
            return check_sigma(value, where)
        if self.sigmas:
            return check_sigmas(value, where)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wrong_bool = self.kind is not bool and isinstance(value, bool)
        if wrong_bool or not isinstance(value, self.kind):
            raise ConfigError(f"{where}: expected {self.describe()}, got {value!r}")
        if not self._finite_enough(value):
            raise ConfigError(f"{where}: expected a finite {self.describe()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, self.choices))}, "
                              f"got {value!r}")
        if self.low is not None and value < self.low:
            raise ConfigError(f"{where}: expected {self.describe()}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"{where}: expected {self.describe()}, got {value!r}")
        return value

    def _finite_enough(self, value: Any) -> bool:
        """NaN is never a valid float (it passes every comparison with a bound); infinity is
        refused where a range is declared."""
        if not isinstance(value, float):
            return True
        if math.isnan(value):
            return False
        ranged = self.low is not None or self.high is not None
        return math.isfinite(value) or not ranged

    def describe(self) -> str:
        text = self.kind.__name__
        if self.low is not None and self.high is not None:
            text += f" in [{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            text += f" >= {self.low:g}"
        elif self.high is not None:
            text += f" <= {self.high:g}"
        return text + (" or null" if self.optional else "")


def bind(method: str, declared: Mapping[str, Param],
         layers: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Defaults overridden by each ``(where, values)`` layer in turn, every value checked.

    ``where`` prefixes the key in errors, e.g. ``registry.yaml: methods.dds.params.`` or
    ``--param ``; an unknown key lists the declared ones (with a did-you-mean).
    """
    values = {name: p.default for name, p in declared.items()}
    for where, layer in layers:
        for key, value in (layer or {}).items():
            if key not in declared:
                close = difflib.get_close_matches(str(key), list(declared), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                allowed = ", ".join(sorted(declared)) or "none"
                raise ConfigError(f"{where}{key}: unknown param of method {method!r}{hint}; "
                                  f"allowed: {allowed}")
            values[key] = declared[key].check(value, f"{where}{key}")
    return values

