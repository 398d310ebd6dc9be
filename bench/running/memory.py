"""Memory: the largest ``--batch`` that fits by the estimate, and allocation failures told apart.

``--batch`` noisy copies of an image go through the base classifier at once. Before the run,
:func:`fit_batch` estimates what a batch needs (``MEMORY_FACTOR`` x 4 bytes per image float and
prediction per sample, for the noise buffer and the classifier's activations) and, when that
exceeds ``MEMORY_SHARE`` of the memory available (CUDA: free device memory; else the host's
available memory, capped by the address-space limit), lowers the batch and says so on stderr:
the batch size never changes a certificate. An allocation that fails anyway (the estimate is
rough) is recognised by :func:`is_out_of_memory`, and the runner stops with one line asking for
a smaller ``--batch``.
"""

from __future__ import annotations

import os
import re
import sys

import torch
from tqdm import tqdm

from bench.certify.noise import chunk_size
from bench.certify.procedures import Procedure
from bench.errors import ConfigError

MEMORY_FACTOR = 64  # floats per image float of a noisy sample: buffer + classifier activations
MEMORY_SHARE = 0.5  # of the available memory a batch may use


def fit_batch(procedure: Procedure, shape, batch: int, device: torch.device,
              available: int | None = None) -> int:
    """``batch``, or the largest batch that fits in memory by the estimate (said on stderr).

    A batch never exceeds a phase's samples (N0 or N), so only ``min(batch, max(N0, N))``
    noisy copies (each with ``m`` predictions) are ever held at once. ``available`` defaults
    to :func:`available_memory`; where that is unknown, the batch is kept.
    """
    b = procedure.budget
    used = max(1, min(batch, max(b.n0, b.n)))
    per_sample = 4 * MEMORY_FACTOR * max(1, int(b.m)) * int(torch.Size(shape).numel())
    available = available_memory(device) if available is None else available
    if available is None or used * per_sample <= MEMORY_SHARE * available:
        return batch
    fits = int(MEMORY_SHARE * available // per_sample)
    if fits < 1:
        raise ConfigError(
            f"one noisy sample needs ~{_gb(per_sample)} of memory by certbench's estimate, more "
            f"than half of the {_gb(available)} available on {device}; free some memory or use "
            "another --device")
    chunk = chunk_size(shape)
    fits = fits - fits % chunk if fits >= chunk else fits  # whole noise chunks when possible
    tqdm.write(f"certbench: --batch {batch} would need ~{_gb(used * per_sample)} of memory, "
               f"{_gb(available)} is available on {device}: using --batch {fits} (the batch "
               "size never changes a certificate)", file=sys.stderr)
    return fits


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still allocate on ``device``, or None when unknown.

    CUDA: the device's free memory. Otherwise the host's available memory (Linux
    ``MemAvailable``, else the physical memory), capped by the process's address-space limit
    (``ulimit -v``) less what it already maps.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type not in ("cpu", "mps"):
        return None
    avail = _meminfo_available()
    if avail is None:
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    try:
        import resource  # lazy: POSIX only

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            headroom = max(0, soft - mapped)
            avail = headroom if avail is None else min(avail, headroom)
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    return avail


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


_OOM = re.compile(r"out of memory|can't allocate memory|not enough memory|failed to allocate|"
                  r"cannot allocate memory", re.I)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of torch (CPU or CUDA) or of Python."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError",
                                                              None)
    if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM.search(str(exc)))
