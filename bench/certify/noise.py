"""The harness's noise: seeded streams of standard-normal samples, and the identity they give a run.

Image ``index`` of a run with seed ``seed`` has one generator per phase (selection, estimation,
prediction), seeded by SeedSequence([seed, index, phase]); it is only ever asked for whole
chunks of ``chunk_size(shape)`` samples, and batches are cut from that stream. So the i-th noisy
sample of an image is the same whatever the batch size, the sharding or a resume, and the
selection and estimation samples are independent streams. An adapter whose base classifier has
randomness of its own (DiffSmooth's local noise, a noised diffusion classifier) draws it from a
:class:`NoiseStream` of its own phases. :func:`noise_identity` is the ``noise`` block of a run's
identity: what a certificate's noise is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CHUNK = 1024  # samples per noise draw (fewer for large images): part of the noise scheme
CHUNK_FLOATS = 1 << 24  # at most 16M floats (64 MB) per draw, e.g. 111 ImageNet images
PHASE_SELECT, PHASE_ESTIMATE, PHASE_PREDICT = 0, 1, 2


def chunk_size(shape) -> int:
    """Samples per noise draw for images of this shape (a function of the shape only)."""
    dim = int(np.prod(shape))
    return max(1, min(CHUNK, CHUNK_FLOATS // dim))


def stream_seed(seed: int, index: int, phase: int) -> int:
    """A 63-bit generator seed for one phase of one image."""
    state = np.random.SeedSequence([seed, index, phase]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class NoiseStream:
    """Standard-normal noise for one (image, phase), served in batches of any size.

    The generator only ever draws whole chunks of identical size, so its state advances the
    same way whatever the batch size; a partly used chunk is kept for the next batch.
    """

    def __init__(self, shape, device, seed: int, index: int, phase: int):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.chunk = chunk_size(self.shape)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(seed, index, phase))
        self.pending: torch.Tensor | None = None

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (b, *shape) with the next b samples of the stream."""
        b, pos = out.shape[0], 0
        if self.pending is not None:
            take = min(b, self.pending.shape[0])
            out[:take].copy_(self.pending[:take])
            self.pending = self.pending[take:] if take < self.pending.shape[0] else None
            pos = take
        while pos < b:
            if b - pos >= self.chunk:
                torch.randn((self.chunk, *self.shape), generator=self.generator,
                            out=out[pos : pos + self.chunk])
                pos += self.chunk
            else:
                block = torch.randn((self.chunk, *self.shape), generator=self.generator,
                                    device=self.device, dtype=out.dtype)
                out[pos:].copy_(block[: b - pos])
                self.pending = block[b - pos :]
                pos = b
        return out


# The scheme is hashed into every run id: its text never changes.
NOISE_SCHEME = ("torch.randn in whole chunks from a generator seeded by SeedSequence([seed, "
                "idx, phase]); phases select=0 estimate=1")


def noise_identity(shape, device: torch.device | str) -> dict[str, Any]:
    """The ``noise`` block of a run's identity: chunk size, scheme and generator device type.

    torch's CPU and CUDA generators give different streams from the same seed, so the device type is
    part of what a certificate's noise is. The CPU generator is identity version 1's implicit one:
    its key is left out, so every run id written before the key existed stays valid; any other
    device type (``"generator": "cuda"``, ...) is recorded, and a run resumed on another device type
    is another run.
    """
    block: dict[str, Any] = {"chunk": chunk_size(shape), "scheme": NOISE_SCHEME}
    kind = torch.device(device).type
    if kind != "cpu":
        block["generator"] = kind
    return block
