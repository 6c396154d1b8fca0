"""Progress that the library shows on stderr while it works (train, grid, hessian, import); silent when disabled.

On a terminal (or in Jupyter): rich's live bar with done/total, rate and ETA. Anywhere else (a SLURM
job, `nohup`, a pipe, a file), where a live bar would print nothing until the end: plain lines, no
escape codes. At the start the planned size; as soon as a first rate is known (after at least a
second) a line with the count, the rate and an ETA; then one such line at most every 30 s
(`LANDSCAPE_PROGRESS_INTERVAL`, in seconds, changes it; 0: a line at every step); and a last line
with the total time. For example:

    grid 6a18795de522: 6724 points planned
    grid 6a18795de522: 82/6724 points (1%), 79.3 points/s, elapsed 0:00:01, ETA 0:01:24
    grid 6a18795de522: 6724/6724 points (100%) in 0:00:13, 505.5 points/s
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console: Console | None = None

INTERVAL_ENV = "LANDSCAPE_PROGRESS_INTERVAL"  # seconds between plain progress lines (not on a terminal)
INTERVAL = 30.0
FIRST_AFTER = 1.0  # the first plain progress line (the first ETA) comes at the first step after this many seconds


def stderr_console() -> Console:
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


class Bar(Protocol):
    def advance(self, n: float = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def set_completed(self, completed: float) -> None: ...


class _NullBar:
    def advance(self, n: float = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def set_completed(self, completed: float) -> None:
        pass


class _RichBar:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)  # type: ignore[arg-type]

    def set_description(self, text: str) -> None:
        self._progress.update(self._task, description=text)  # type: ignore[arg-type]

    def set_completed(self, completed: float) -> None:
        self._progress.update(self._task, completed=completed)  # type: ignore[arg-type]


def interval() -> float:
    """Seconds between plain progress lines: `LANDSCAPE_PROGRESS_INTERVAL` if it is a number >= 0, else 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else INTERVAL
    except ValueError:
        return INTERVAL
    return value if math.isfinite(value) and value >= 0 else INTERVAL


def _clock(seconds: float) -> str:
    """H:MM:SS, as rich's bar shows elapsed time and ETA."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count(n: float) -> str:
    return f"{n:g}" if n != int(n) else str(int(n))


class _PlainBar:
    """Progress as plain lines on stderr: the planned size, then done/total, rate and ETA at most every
    `every` seconds, then the total time."""

    def __init__(self, description: str, total: float, unit: str, completed: float, every: float,
                 write: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self._write, self._clock = write, clock
        self.done = self._initial = completed
        self._start = self._last = clock()
        self._reported = False  # a line with a rate and an ETA written
        already = f", {_count(completed)} done already, {_count(total - completed)} to go" if completed else ""
        self._write(f"{description}: {_count(total)} {unit} planned{already}")

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

    def _share(self) -> str:
        return f"{_count(self.done)}/{_count(self.total)} {self.unit} ({100 * self.done / self.total:.0f}%)" \
            if self.total else f"{_count(self.done)} {self.unit}"

    def _step(self) -> None:
        now = self._clock()
        due = now - self._last >= self.every or (not self._reported and now - self._start >= min(FIRST_AFTER, self.every))
        if not due or self.done <= self._initial:
            return
        rate = self._rate(now)
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "unknown"
        self._write(f"{self.description}: {self._share()}, {rate:,.1f} {self.unit}/s, elapsed "
                    f"{_clock(now - self._start)}, ETA {eta}")
        self._last, self._reported = now, True

    def advance(self, n: float = 1) -> None:
        self.done += n
        self._step()

    def set_description(self, text: str) -> None:
        self.description = text

    def set_completed(self, completed: float) -> None:
        self.done = completed
        self._step()

    def close(self, stopped: bool) -> None:
        now = self._clock()
        rate = self._rate(now)
        speed = f", {rate:,.1f} {self.unit}/s" if self.done > self._initial else ""
        self._write(f"{self.description}: {self._share()} in {_clock(now - self._start)}{speed}"
                    + (", stopped" if stopped else ""))


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _RateColumn(TextColumn):
    """Items per second, with the unit of the bar (points/s, batches/s)."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[no-untyped-def]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: float, *, unit: str = "it", enabled: bool = True,
                 completed: float = 0) -> Iterator[Bar]:
    """A bar with done/total, rate and ETA on stderr (left in place when done); not on a terminal, plain
    lines (the module's docstring); nothing when not `enabled`."""
    if not enabled:
        yield _NullBar()
        return
    console = stderr_console()
    if not (console.is_terminal or console.is_jupyter):
        plain = _PlainBar(description, total, unit, completed, interval(), _stderr_line)
        try:
            yield plain
        except BaseException:
            plain.close(stopped=True)
            raise
        plain.close(stopped=False)
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=int(completed))
        yield _RichBar(progress, task)
