"""The compute budget of a run, in one place: N0, N and m, and N = B // m for a requested
budget of B predictions per image (DiffSmooth's Table 6: DDS at N = 100,000 against DiffSmooth
at N = 10,000 with m = 10). No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.data.specs import DatasetSpec
from bench.errors import ConfigError

MAX_N = 10**9


@dataclass(frozen=True)
class Budget:
    """Selection samples N0, estimation samples N, predictions per sample m, and the budget
    the user asked for (None when N was given directly)."""

    n0: int
    n: int
    m: int = 1
    requested: int | None = None
    stages: int = 1  # a multi-stage procedure draws N at each stage (the cascade's worst case)

    @property
    def predictions(self) -> int:
        """Predictions per image at worst, stages x N x m: the same-compute tier of a run."""
        return predictions(self.n, self.m) * self.stages

    def card(self) -> dict[str, Any]:
        out = {"predictions_per_image": self.predictions, "n0": self.n0, "n": self.n,
               "m": self.m, "requested": self.requested}
        if self.stages != 1:
            out["stages"] = self.stages
        return out


def predictions(n: int | None, m: int | None) -> int | None:
    """N x m (m defaults to 1); None when N is unknown (a paper that does not say)."""
    if n is None:
        return None
    return n * (m or 1)


def check_request(n0: int, n: int | None, budget: int | None) -> None:
    """Sizes on the command line, before any model is loaded."""
    if budget is not None and n is not None:
        raise ConfigError("--budget sets N (= budget // m); drop --n or --budget")
    if budget is not None and not 1 <= budget <= MAX_N:
        raise ConfigError(f"--budget must be in [1, {MAX_N}] predictions per image, got {budget}")
    if not 1 <= n0 <= MAX_N:
        raise ConfigError(f"--n0 must be in [1, {MAX_N}], got {n0}")
    if n is not None and not 1 <= n <= MAX_N:
        raise ConfigError(f"--n must be in [1, {MAX_N}], got {n}")


def n_for_budget(budget: int, m: int, method: str) -> int:
    """N for a budget of ``budget`` predictions per image at ``m`` predictions per sample."""
    if budget < m:
        raise ConfigError(f"--budget {budget} is smaller than {method}'s m = {m} predictions per "
                          f"noisy sample; use a budget of at least {m}")
    return budget // m


def resolve(dataset: DatasetSpec, n0: int, n: int | None, budget: int | None, m: int,
            method: str) -> Budget:
    """The run's budget: N from --budget (N = B // m), else --n, else the dataset's default
    (Cohen's 100,000; smaller on the embedded digits)."""
    check_request(n0, n, budget)
    if budget is not None:
        n = n_for_budget(budget, m, method)
    elif n is None:
        n = dataset.default_n
    return Budget(n0=n0, n=n, m=m, requested=budget)


def tier(card: Any) -> int | None:
    """The same-compute tier a stored run is compared in: the budget the user requested
    (``budget.requested`` of the card, e.g. B = 10,000 at m = 3 although N x m = 9,999), else
    N x m. ``card`` is a :class:`bench.certify.records.RunCard` or its JSON form."""
    if isinstance(card, dict):
        identity = card.get("identity", {})
        extra = card
    else:
        identity, extra = card.identity, card.extra
    block = extra.get("budget") or {}
    for value in (block.get("requested"), block.get("predictions_per_image")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return predictions(identity.get("n"), identity.get("m", 1))
