"""``bench train --method ddpm``: a small DDPM denoiser for DDS/DiffSmooth on small data.

Not a certification method: it has no base classifier. The trainer itself (UNet, schedule, EMA,
resumable loop, the card's denoised accuracy) is :mod:`bench.training.ddpm`; this adapter only
hands it the TrainContext.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.contract import Context, Method, TrainContext
from bench.errors import ConfigError
from bench.params import Param
from bench.training.ddpm import train_ddpm


class DDPM(Method):
    """Not a certification method: ``bench train --method ddpm`` builds a denoiser."""

    id = "ddpm"
    PARAMS: Mapping[str, Param] = {}

    def base_classifier(self, ctx: Context):
        raise ConfigError("method 'ddpm' only trains a denoiser; certify with --method dds or "
                          "--method diffsmooth")

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        return train_ddpm(ctx)
