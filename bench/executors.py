"""Executors: map image indices to certificates, handing each over as soon as it exists.

An executor never changes a certificate (every random draw is seeded by run seed, image
index and phase), so a run's results are the same whichever executor, shard or resume
produced them. Today: :class:`SerialExecutor`, one process on one device. Shards, a
distributed engine or a GPU pipeline plug in here without editing the runner.

The runner hands an executor a lazy iterable of indices: images are claimed in the store as
they are asked for (so processes on one run share them), and the runner commits each
certificate before asking for the next. An executor should pull an index only when it is
about to certify it; one that reads ahead holds claims it has not started on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Protocol

import torch

from bench.datasets import CertDataset
from bench.devices import describe_device
from bench.procedures import Procedure
from bench.records import Certificate


class Executor(Protocol):
    def certify(self, indices: Iterable[int]) -> Iterator[Certificate]: ...


class SerialExecutor:
    """Certifies the images one after the other in this process, on one device."""

    def __init__(self, procedure: Procedure, dataset: CertDataset, device: torch.device):
        self.procedure, self.dataset, self.device = procedure, dataset, device
        self.device_name = describe_device(device)

    def certify(self, indices: Iterable[int]) -> Iterator[Certificate]:
        """Certify the images one at a time, pulling the next index only after the last
        certificate was taken."""
        for idx in indices:
            x, label = self.dataset[idx]
            cert = self.procedure.certify(x.to(self.device), idx, int(label))
            yield replace(cert, device=self.device_name)
