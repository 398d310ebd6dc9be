"""Dataset names and reporting radius grids: torch-free, so the reporting commands (table,
leaderboard, import) share them with the certification side without importing torch."""

from __future__ import annotations

DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "imagenet",
    "imagefolder",
)

# (step, largest radius) of each dataset's reporting grid, in [0, 1] pixel units.
RADIUS_GRIDS: dict[str, tuple[float, float]] = {
    "digits": (0.25, 2.0),
    "mnist": (0.25, 2.5),
    "fashion-mnist": (0.25, 2.5),
    "cifar10": (0.25, 2.25),
    "imagenet": (0.5, 3.0),
    "imagefolder": (0.5, 3.0),
}
DEFAULT_GRID = (0.25, 2.0)


def grid_for(name: str) -> tuple[float, ...]:
    """L2 radii at which certified accuracy is reported (the default grid for unknown names)."""
    step, top = RADIUS_GRIDS.get(name, DEFAULT_GRID)
    return tuple(round(i * step, 4) for i in range(round(top / step) + 1))
