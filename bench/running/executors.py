"""Executors: map image indices to certificates, handing each over as soon as it exists.

An executor never changes a certificate (every random draw is seeded by run seed, image
index and phase), so a run's results are the same whichever executor, shard or resume
produced them. :class:`SerialExecutor` certifies in this process on one device;
:class:`bench.running.ray_executor.RayExecutor` (``--executor ray``) on Ray actors, one per
device (the core never imports ray). The runner picks one from the run's options
(:func:`bench.running.runner.make_executor`).

The runner hands an executor a lazy iterable of indices: images are claimed in the store as
they are asked for (so processes on one run share them), and the runner commits each
certificate as it is yielded. An executor should pull an index only when it is about to
certify it; one that reads ahead holds claims it has not started on. An executor that keeps
several images in flight sets ``polls = True``: it is then handed :func:`polled_indices`,
which yields ``None`` instead of waiting when every image left is held by another process,
so it can hand over its finished certificates meanwhile (two such processes on one run would
otherwise each wait for images the other has certified but not yet committed).

The runner closes the iterator :meth:`Executor.certify` returns (``contextlib.closing``) when
it stops early, so an executor releases what it started (workers, a cluster) in its
``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import torch

from bench.certify.procedures import Procedure
from bench.certify.records import Certificate
from bench.certify.smoothing import image_problem
from bench.data.loaders import CertDataset
from bench.errors import DataError
from bench.running.devices import describe_device

if TYPE_CHECKING:
    from bench.store.database import ClaimSession

EXECUTORS = ("serial", "ray")


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
            yield self.certify_one(idx)

    def certify_one(self, idx: int) -> Certificate:
        x, label = self.dataset[idx]
        path_of = getattr(self.dataset, "path_of", None)  # a class-folder tree's file
        path = path_of(idx) if callable(path_of) else None
        check_image(self.dataset, idx, x, path)
        cert = self.procedure.certify(x.to(self.device), idx, int(label))
        return replace(cert, device=self.device_name, path=path or cert.path)


def check_image(dataset: CertDataset, idx: int, x: torch.Tensor, path: str | None) -> None:
    """An image with NaN or values outside [0, 1] (a float TIFF, a loader's bug) is one line
    naming the user's file (or index), before any noise; checked where it was read (the CPU,
    for the datasets here), so no device sync."""
    problem = image_problem(x)
    if problem:
        where = f" ({path})" if path else ""
        raise DataError(f"{dataset.info.name} image {idx}{where} has {problem}, not pixels in "
                        "[0, 1]; replace or remove the file, or fix the dataset's loader")


def polled_indices(claims: ClaimSession, todo: Sequence[int], chunk: Callable[[], int], *,
                   left: Callable[[int], None] | None = None,
                   waiting: Callable[[int], None] | None = None) -> Iterator[int | None]:
    """:func:`bench.running.runner.claimed_indices` for an executor with ``polls = True``: the same
    claims, but where that waits for images another live process holds, this yields ``None``
    (nothing claimable now; ask again after a while). Ends when every image is done."""
    remaining = list(todo)
    said = False
    while remaining:
        got = claims.take(remaining, chunk())
        taken = set(got.claimed) | got.done
        remaining = [idx for idx in remaining if idx not in taken]
        if left is not None:
            left(len(got.claimed) + len(remaining))
        if got.claimed:
            yield from got.claimed
            continue
        if not got.held:
            return
        if not said and waiting is not None:
            waiting(len(got.held))
            said = True
        yield None
