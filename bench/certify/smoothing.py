"""Randomized smoothing: batched Monte-Carlo counts, CERTIFY and PREDICT (:class:`Smooth`).

The harness owns the noise (:mod:`bench.certify.noise`: one seeded stream per image and phase,
so the i-th noisy sample of an image is the same whatever the batch size, the sharding or a
resume). Counting happens on the device (bincount), with one host sync per image.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.certify import stats
from bench.certify.noise import (
    PHASE_ESTIMATE,
    PHASE_PREDICT,
    PHASE_SELECT,
    NoiseStream,
)
from bench.certify.records import Certificate
from bench.contract import Cost, labels_from_logits
from bench.data.layout import standard_layout
from bench.errors import ModelError


class Smooth:
    """A smoothed classifier g around a base classifier f, as in Cohen et al. (2019).

    ``base_classifier`` is a network returning logits (B, K) or a callable returning labels
    (B,), applied to images in [0, 1] plus N(0, sigma^2 I) noise; sigma is in [0, 1] pixel
    units. Results depend on (seed, index), never on batch_size. Without ``index=`` each call
    draws a fresh noise stream (Cohen et al.'s behaviour: certifying a dataset in a loop does not
    reuse one image's noise for the next), reproducible under ``torch.manual_seed`` or a
    ``generator``; with ``seed=`` and ``index=`` a certificate is reproducible bit for bit.
    """

    ABSTAIN = stats.ABSTAIN

    def __init__(self, base_classifier, num_classes: int, sigma: float):
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.cost: Cost = getattr(base_classifier, "cost", Cost())
        if isinstance(base_classifier, torch.nn.Module):
            base_classifier.eval()  # BatchNorm in train mode would couple the samples of a batch

    # ----- Cohen-compatible API -------------------------------------------------------------
    def certify(self, x, n0=100, n=100_000, alpha=0.001, batch_size=1000, *, seed=0,
                generator=None, index=None):
        """(label, radius): CERTIFY with n0 selection and n estimation samples; -1 abstains.

        ``x`` is one image (C, H, W), or a batch (B, C, H, W) certified image by image
        (:meth:`certify_batch`: two arrays of length B). A batch of one, (1, C, H, W), is
        one image and returns one (label, radius), as before batches were accepted; call
        :meth:`certify_batch` for arrays whatever B. torch tensors or numpy arrays, float in
        [0, 1] (numpy is converted to float32 on the network's device).
        """
        x = self._as_tensor(x)
        if _is_batch(x):
            return self.certify_batch(x, n0, n, alpha, batch_size, seed=seed,
                                      generator=generator, index=index)
        cert = self.certify_record(x, n0, n, alpha, batch_size, seed=seed, generator=generator,
                                   index=index)
        return cert.prediction, cert.radius

    def predict(self, x, n=100_000, alpha=0.001, batch_size=1000, *, seed=0, generator=None,
                index=None):
        """PREDICT: the top class if it beats the runner-up in a binomial test at alpha, else -1.

        A batch (B, C, H, W) returns an array of B labels (:meth:`predict_batch`); one image,
        or a batch of one, returns one label."""
        x = self._as_tensor(x)
        if _is_batch(x):
            return self.predict_batch(x, n, alpha, batch_size, seed=seed, generator=generator,
                                      index=index)
        seed, index = _resolve_stream(seed, generator, index)
        x = self._prepare(x)
        counts = self.sample_counts(x, n, batch_size, seed=seed, index=index, phase=PHASE_PREDICT)
        counts = self._checked(counts.cpu().tolist(), index)
        return stats.predict_decision(counts, alpha)

    # ----- batches of images ----------------------------------------------------------------
    def certify_batch(self, x, n0=100, n=100_000, alpha=0.001, batch_size=1000, *, seed=0,
                      generator=None, index=None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, radii), int64 and float64 arrays of length B: one certificate per image of
        the batch (B, C, H, W), each equal to a single call on that image. Image b uses
        ``index + b``; without ``index`` each image draws a fresh stream, as consecutive single
        calls do (so ``torch.manual_seed`` or ``generator`` reproduces the batch)."""
        certs = self.certify_records(x, n0, n, alpha, batch_size, seed=seed,
                                     generator=generator, index=index)
        return (np.array([c.prediction for c in certs], dtype=np.int64),
                np.array([c.radius for c in certs], dtype=np.float64))

    def certify_records(self, x, n0=100, n=100_000, alpha=0.001, batch_size=1000, *, seed=0,
                        generator=None, index=None) -> list[Certificate]:
        """:meth:`certify_record` for each image of a batch (B, C, H, W), image b with index
        ``index + b`` (or a fresh stream each without ``index``)."""
        _check_sizes(n0, n, alpha, batch_size)
        images = self._batch_images(x, index)
        return [self.certify_record(img, n0, n, alpha, batch_size, seed=seed,
                                    generator=generator, index=i) for img, i in images]

    def predict_batch(self, x, n=100_000, alpha=0.001, batch_size=1000, *, seed=0,
                      generator=None, index=None) -> np.ndarray:
        """PREDICT for each image of a batch (B, C, H, W): an int64 array of B labels (-1
        abstains), image b seeded as a single call with ``index + b`` (or a fresh stream)."""
        _check_sizes(1, n, alpha, batch_size)
        images = self._batch_images(x, index)
        return np.array([self.predict(img, n, alpha, batch_size, seed=seed,
                                      generator=generator, index=i) for img, i in images],
                        dtype=np.int64)

    def _batch_images(self, x, index: int | None) -> list[tuple[torch.Tensor, int | None]]:
        """The images of a batch with their indices, all checked before the first sample."""
        x = self._as_tensor(x)
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        if index is not None and index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        if x.shape[0]:
            try:
                self._prepare(x.flatten(0, 1))  # dtype and range of the whole batch at once
            except ValueError:  # say which image
                for b in range(x.shape[0]):
                    self._prepare(x[b], what=f"image {b} of the batch")
                raise
        return [(x[b], None if index is None else int(index) + b) for b in range(x.shape[0])]

    def _as_tensor(self, x):
        """A numpy array or a (nested) list as a tensor on the base classifier's device (its
        first parameter or buffer, else the CPU), floats as float32; a tensor where it is,
        float64 as float32 (what the networks take)."""
        if isinstance(x, list | tuple):
            x = np.asarray(x, dtype=np.float32)
        if torch.is_tensor(x):
            return x.to(torch.float32) if x.dtype == torch.float64 else x
        if not isinstance(x, np.ndarray):
            raise TypeError(f"expected an image as a torch tensor, numpy array or list, got "
                            f"{type(x).__name__}")
        x = torch.from_numpy(np.ascontiguousarray(x))
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.to(torch.float32)
        return x.to(_device_of(self.base_classifier))

    # ----- full record ----------------------------------------------------------------------
    def certify_record(self, x, n0=100, n=100_000, alpha=0.001, batch_size=1000, *, seed=0,
                       generator=None, index=None) -> Certificate:
        """CERTIFY with every number kept: counts, p_A bound, radius, forward passes, seconds."""
        _check_sizes(n0, n, alpha, batch_size)
        image = -1 if index is None else index
        seed, index = _resolve_stream(seed, generator, index)
        start = time.perf_counter()
        x = self._prepare(self._as_tensor(x))
        counts_select, counts_estimate = self.select_and_estimate(
            x, n0, n, batch_size, seed=seed, index=index)
        top = int(np.argmax(counts_select))
        count = counts_estimate[top]
        prediction, radius, p_lower = stats.certify_decision(top, count, n, alpha, self.sigma)
        samples = n0 + n
        return Certificate(
            prediction=prediction, radius=radius, p_lower=p_lower, top_class=top, count=count,
            n0=n0, n=n, counts_select=counts_select, counts_estimate=counts_estimate,
            classifier_passes=samples * self.cost.classifier_passes,
            diffusion_passes=samples * self.cost.diffusion_passes,
            seconds=time.perf_counter() - start, idx=image,
        )

    def certify_prefixes(self, x, n0: int, ns, alpha=0.001, batch_size=1000, *, seed=0,
                         index: int) -> list[Certificate]:
        """CERTIFY at each N of ``ns`` from one pass over the estimation stream: the stream is
        prefix-stable (:class:`StreamCounts`), so the record at N is the one
        :meth:`certify_record` gives with ``n=N`` (same selection counts, the first N estimation
        samples), counted once up to the largest N. ``seconds`` of each is the time to reach its
        N (selection included). Records in the order of ``ns``."""
        ns = [int(v) for v in ns]
        if not ns:
            return []
        for n in ns:
            _check_sizes(n0, n, alpha, batch_size)
        seed, index = _resolve_stream(seed, None, index)
        start = time.perf_counter()
        x = self._prepare(self._as_tensor(x))
        counts_select = self._checked(self.sample_counts(
            x, n0, batch_size, seed=seed, index=index, phase=PHASE_SELECT).cpu().tolist(), index)
        top = int(np.argmax(counts_select))
        stream = StreamCounts(self, x, batch_size, seed=seed, index=index, phase=PHASE_ESTIMATE)
        out: dict[int, Certificate] = {}
        for n in sorted(set(ns)):
            counts_estimate = stream.extend_to(n)
            count = counts_estimate[top]
            prediction, radius, p_lower = stats.certify_decision(top, count, n, alpha,
                                                                 self.sigma)
            samples = n0 + n
            out[n] = Certificate(
                prediction=prediction, radius=radius, p_lower=p_lower, top_class=top,
                count=count, n0=n0, n=n, counts_select=list(counts_select),
                counts_estimate=counts_estimate,
                classifier_passes=samples * self.cost.classifier_passes,
                diffusion_passes=samples * self.cost.diffusion_passes,
                seconds=time.perf_counter() - start, idx=index)
        return [out[n] for n in ns]

    def select_and_estimate(self, x: torch.Tensor, n0: int, n: int, batch_size: int, *,
                            seed: int, index: int,
                            phases: tuple[int, int] = (PHASE_SELECT, PHASE_ESTIMATE)
                            ) -> tuple[list[int], list[int]]:
        """Selection (n0) and estimation (n) counts from two independent streams (``phases``;
        a multi-stage procedure gives each stage its own pair), checked for invalid outputs,
        with one host sync. ``x`` is an already checked image."""
        c0 = self.sample_counts(x, n0, batch_size, seed=seed, index=index, phase=phases[0])
        c1 = self.sample_counts(x, n, batch_size, seed=seed, index=index, phase=phases[1])
        both = torch.stack([c0, c1]).cpu().tolist()  # the one host sync of this image (stage)
        return self._checked(both[0], index), self._checked(both[1], index)

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *, seed: int, index: int,
                      phase: int) -> torch.Tensor:
        """Label histogram (K + 1 bins, the last for invalid outputs) of f on num noisy copies."""
        counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=x.device)
        stream = NoiseStream(x.shape, x.device, seed, index, phase)
        self._begin_phase(seed, index, phase)
        self._count(x, stream, num, batch_size, counts)
        return counts

    def _count(self, x: torch.Tensor, stream: NoiseStream, num: int, batch_size: int,
               counts: torch.Tensor) -> None:
        """Add f's labels on the next ``num`` samples of ``stream`` to ``counts`` (in place)."""
        k = self.num_classes
        buffer = torch.empty((min(batch_size, num), *x.shape), dtype=x.dtype, device=x.device)
        done = 0
        with torch.inference_mode():
            while done < num:
                b = min(batch_size, num - done)
                noise = stream.fill(buffer[:b])
                batch = torch.add(x, noise, alpha=self.sigma, out=noise)  # one pass: x + s*z
                labels = self._labels(checked_output(self.base_classifier(batch), b))
                counts += torch.bincount(labels, minlength=k + 1)
                done += b

    # ----- helpers --------------------------------------------------------------------------
    def _begin_phase(self, seed: int, index: int, phase: int) -> None:
        """Let a base classifier with its own randomness (DiffSmooth's fresh local noise)
        restart it for this (seed, image, phase), before the phase's first sample: its draws
        then depend on neither batching nor order, and the estimation phase's draws do not
        depend on how many the selection phase used (N0)."""
        begin_phase = getattr(self.base_classifier, "begin_phase", None)
        if callable(begin_phase):
            begin_phase(seed, index, phase)

    def _labels(self, out: torch.Tensor) -> torch.Tensor:
        if out.is_floating_point():
            return labels_from_logits(out, self.num_classes)
        out = out.long().reshape(-1)
        valid = (out >= 0) & (out < self.num_classes)
        return torch.where(valid, out, torch.full_like(out, self.num_classes))

    def _checked(self, counts: list[int], index: int) -> list[int]:
        bad = counts[-1]
        if bad:
            raise ModelError(
                f"the base classifier returned NaN/inf logits or out-of-range labels for {bad} "
                f"noisy copies of image {index}; check the model's weights and input range"
            )
        return counts[:-1]

    @staticmethod
    def _prepare(x: torch.Tensor, what: str = "the image") -> torch.Tensor:
        """One checked image (C, H, W) with row-major strides: the batches built from it are
        plain NCHW whatever layout the caller's tensor had."""
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 3:
            raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got dtype {x.dtype}; divide "
                             "by 255 (sigma and radii are in [0, 1] pixel units)")
        problem = image_problem(x)
        if problem:
            raise ValueError(
                f"expected an image in [0, 1] (sigma and radii are in those pixel units), "
                f"{what} has {problem}; put any normalization inside the base classifier, "
                "after the noise")
        return standard_layout(x)


class StreamCounts:
    """Running label counts of a smoothed classifier on one (image, phase) stream, extended on
    demand (a sequential procedure's checkpoints). The stream is :class:`NoiseStream`'s, so the
    counts after ``extend_to(n)`` equal ``Smooth.sample_counts(x, n, ...)`` for the same (seed,
    index, phase), whatever the checkpoints or the batch size before. The base classifier's
    own randomness is restarted (``begin_phase``) before the first sample; do not interleave
    two phases of one base classifier."""

    def __init__(self, smooth: Smooth, x: torch.Tensor, batch_size: int, *, seed: int,
                 index: int, phase: int):
        self.smooth, self.x, self.batch_size = smooth, x, batch_size
        self.seed, self.index, self.phase = seed, index, phase
        self.stream = NoiseStream(x.shape, x.device, seed, index, phase)
        self.counts = torch.zeros(smooth.num_classes + 1, dtype=torch.long, device=x.device)
        self.done = 0  # samples counted so far

    def extend_to(self, num: int) -> list[int]:
        """Count samples ``done .. num - 1`` too; the checked histogram of the first ``num``
        samples (one host sync)."""
        if num < self.done:
            raise ValueError(f"the stream is already at {self.done} samples, cannot go back "
                             f"to {num}")
        if self.done == 0 and num > 0:
            self.smooth._begin_phase(self.seed, self.index, self.phase)
        if num > self.done:
            self.smooth._count(self.x, self.stream, num - self.done, self.batch_size,
                               self.counts)
            self.done = num
        return self.smooth._checked(self.counts.cpu().tolist(), self.index)


def image_problem(x: torch.Tensor) -> str | None:
    """What keeps ``x`` from being an image in [0, 1] (NaN, or values outside), or None.
    NaN passes every comparison, so it is looked for first. One host sync."""
    if not x.numel():
        return None
    low, high = (float(v) for v in x.aminmax())
    if math.isnan(low) or math.isnan(high):
        return "NaN values"
    if low < -1e-6 or high > 1 + 1e-6:
        return f"values in [{low:.3g}, {high:.3g}]"
    return None


def checked_output(out, b: int, who: str = "the base classifier") -> torch.Tensor:
    """The base classifier's answer for a batch of ``b``: labels (b,) or logits (b, K). Any
    other batch size is one line: a (1, K) answer would count one sample per batch (all
    abstain), a (2b, K) one too many. A shape check only: no host sync."""
    if not torch.is_tensor(out):
        raise ModelError(f"{who} returned {type(out).__name__} for a batch of "
                         f"{b} noisy images; return logits ({b}, K) or labels ({b},) as a "
                         "tensor")
    if out.is_floating_point():
        fits = out.dim() == 2  # logits
    else:
        fits = out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1)  # labels
    if not fits or out.shape[0] != b:
        raise ModelError(f"{who} returned shape {tuple(out.shape)} for a batch "
                         f"of {b} noisy images; return logits ({b}, K) or labels ({b},)")
    return out


def _is_batch(x) -> bool:
    """A (B, C, H, W) input with B != 1 (a batch of one stays one image, as it always was)."""
    return torch.is_tensor(x) and x.dim() == 4 and x.shape[0] != 1


def _device_of(f) -> torch.device:
    if isinstance(f, torch.nn.Module):
        for t in (*f.parameters(), *f.buffers()):
            return t.device
    return torch.device("cpu")


FRESH_INDEX_BASE = 1 << 62  # fresh streams never coincide with an image index below 2^62


def _resolve_stream(seed: int, generator: torch.Generator | None,
                    index: int | None) -> tuple[int, int]:
    """(seed, index) of a call's noise. With ``index`` the stream is fixed by (seed, index):
    bit-for-bit reproducible. Without it every call draws a fresh stream, as Cohen et al.'s
    code does: its index comes from ``generator`` if given, else from torch's global RNG (so
    ``torch.manual_seed`` reproduces a script), offset past any image index."""
    seed = _resolve_seed(seed, generator)
    if index is None:
        draw = torch.randint(0, 2**62, (1,), generator=generator)
        return seed, FRESH_INDEX_BASE + int(draw.item())
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    return seed, int(index)


def _resolve_seed(seed: int, generator: torch.Generator | None) -> int:
    if generator is not None:
        return int(torch.randint(0, 2**62, (1,), generator=generator).item())
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _check_sizes(n0: int, n: int, alpha: float, batch_size: int) -> None:
    if n0 < 1 or n < 1:
        raise ValueError(f"n0 and n must be at least 1, got n0={n0}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
