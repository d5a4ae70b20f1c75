"""Progress of long work: a tqdm bar on a terminal, a few plain lines anywhere else.

A redrawn bar written to a log file or a CI console becomes thousands of carriage-return fragments, so when
the stream is not a terminal `progress(...)` prints one line at each quarter of the work (and at least
every `every_s` seconds), e.g. `fit-generator: 250/500 step (50%), 1.4 step/s, 3m02s elapsed, loss=0.1021`.
Both have tqdm's small interface: iterate, `update(n)`, `set_postfix(**kw)`, `close()`, `with`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    stream: IO[str] | None = None,
    every_s: float = 60.0,
):
    """A progress reporter for `iterable` (or `total` units updated by hand)."""
    stream = stream or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not disable and _isatty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return PlainProgress(iterable, total, desc, unit, stream, every_s, silent=disable)


def plain_ray_data_progress(stream: IO[str] | None = None) -> None:
    """Ray Data's progress bars off when `stream` (stdout) is not a terminal. The bars of datasets that run in
    Ray Train's workers are tqdm bars redrawn into the driver's output (dozens of escape-code lines a fold in
    a piped `raydetect train`); the epoch reports are the plain progress there. Call it before the datasets
    are made: they keep the DataContext of their creation."""
    if not _isatty(stream or sys.stdout):
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """Plain-line progress: a line per quarter of `total` (or per `every_s`), and one when it closes."""

    def __init__(self, iterable, total, desc, unit, stream, every_s=60.0, silent=False):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.every_s, self.silent = stream, every_s, silent
        self.n, self.postfix, self.closed = 0, "", False
        self.started = self.last_line = time.monotonic()
        self.next_quarter = 1

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        quarter_done = bool(self.total) and self.n * 4 >= self.next_quarter * self.total
        if quarter_done and self.n < (self.total or 0):
            self.next_quarter = self.n * 4 // self.total + 1
            self._line(now)
        elif now - self.last_line >= self.every_s and self.n < (self.total or float("inf")):
            self._line(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        minutes, seconds = divmod(int(elapsed), 60)
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}{share}{rate}, {minutes}m{seconds:02d}s elapsed{tail}"

    def _line(self, now: float) -> None:
        self.last_line = now
        if not self.silent:
            print(self.line(), file=self.stream, flush=True)
