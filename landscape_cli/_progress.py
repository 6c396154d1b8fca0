"""Progress bars (rich, on stderr) that the library shows while it works; silent when disabled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    """A bar with done/total, rate and ETA on stderr, removed when done only if not a terminal."""
    if not enabled:
        yield _NullBar()
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
