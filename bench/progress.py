"""Progress of long loops: a tqdm bar on a terminal, plain periodic log lines elsewhere.

A SLURM log (or any file or pipe) would otherwise collect one carriage-return update per
image; there :func:`progress` returns a :class:`LineProgress` that writes a line such as::

    certbench: gaussian/digits sigma=0.25: 120/360 images (33%), 12.3 img/s, eta 20 s

at most every ``interval`` seconds (30 by default) or when another tenth of the work is done,
plus one line when it finishes. Both kinds take tqdm's keyword arguments and offer the surface
the callers use: iteration, ``update``, ``set_postfix``, ``refresh``, ``close``, ``n`` and a
settable ``total``. ``$CERTBENCH_PROGRESS`` forces one kind: ``bar`` or ``lines``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

INTERVAL_S = 30.0  # a line at least this often while work goes on ...
STEP_FRACTION = 0.1  # ... and whenever another tenth of the total is done
ENV = "CERTBENCH_PROGRESS"


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None,
             desc: str = "", unit: str = "it", disable: bool = False, initial: float = 0,
             file: IO[str] | None = None, interval: float = INTERVAL_S, **tqdm_kwargs: Any):
    """A progress reporter taking tqdm's arguments: a tqdm bar when ``file`` (stderr by
    default) is a terminal, else a :class:`LineProgress`. ``disable`` silences both."""
    stream = sys.stderr if file is None else file
    if iterable is not None and total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    if disable or _wants_bar(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                    initial=initial, file=file, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        file=stream, interval=interval,
                        unit_scale=bool(tqdm_kwargs.get("unit_scale")))


def _wants_bar(stream: IO[str]) -> bool:
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "tqdm"):
        return True
    if forced in ("lines", "log", "plain"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class LineProgress:
    """tqdm's surface, reported as occasional one-line messages instead of a redrawn bar."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None,
                 desc: str = "", unit: str = "it", initial: float = 0,
                 file: IO[str] | None = None, interval: float = INTERVAL_S,
                 unit_scale: bool = False, clock: Callable[[], float] = time.monotonic):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.file = sys.stderr if file is None else file
        self.interval, self.unit_scale, self.clock = interval, unit_scale, clock
        self.postfix = ""
        self.disable = False
        self.closed = False
        self._start_n = initial
        self._start = self._last = clock()
        self._last_step = self._step(initial)
        self._said_n: float | None = None

    # ----- tqdm's surface -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress reporter has no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        step = self._step(self.n)
        if now - self._last >= self.interval or step > self._last_step:
            self._write(now)
            self._last, self._last_step = now, step

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are written as work is done."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._start_n and self._said_n != self.n:
            self._write(self.clock())

    @staticmethod
    def write(text: str, file: IO[str] | None = None, end: str = "\n") -> None:
        (file or sys.stderr).write(text + end)

    # ----- the line ---------------------------------------------------------------------------
    def _step(self, n: float) -> int:
        if not self.total:
            return 0
        return int(math.floor(n / self.total / STEP_FRACTION + 1e-9))

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        done, seconds = self.n - self._start_n, max(now - self._start, 0.0)
        if self.unit_scale:  # e.g. 23.0 MB/1.2 GB
            parts = [f"{self._amount(self.n)}/{self._amount(self.total)}" if self.total
                     else self._amount(self.n)]
        else:
            parts = [f"{self._amount(self.n)}/{self._amount(self.total)} {self._plural()}"
                     if self.total else f"{self._amount(self.n)} {self._plural()}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0 and seconds > 0:
            rate = done / seconds
            if self.unit_scale:
                parts.append(f"{self._amount(rate)}/s")
            elif rate >= 1:
                parts.append(f"{self._amount(rate)} {self.unit}/s")
            else:
                parts.append(f"{1 / rate:.1f} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f"eta {_duration((self.total - self.n) / rate)}")
            else:
                parts.append(f"done in {_duration(seconds)}")
        if self.postfix:
            parts.append(self.postfix)
        head = f"certbench: {self.desc}: " if self.desc else "certbench: "
        return head + ", ".join(parts)

    def _write(self, now: float) -> None:
        self.file.write(self.line(now) + "\n")
        self.file.flush()
        self._said_n = self.n

    def _amount(self, value: float | None) -> str:
        if value is None:
            return "?"
        if self.unit_scale:
            for prefix in ("", "k", "M", "G", "T"):
                if abs(value) < 1000 or prefix == "T":
                    number = f"{value:.1f}" if prefix else f"{value:.0f}"
                    return f"{number} {prefix}{self.unit}"
                value /= 1000
        if float(value).is_integer():
            return f"{int(value):,}"
        return f"{value:.1f}"

    def _plural(self) -> str:
        return {"img": "images", "B": "B", "it": "steps"}.get(self.unit, f"{self.unit}s")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
