"""Progress of a batch: counts of cells done, running, cached and failed, shown live or as plain lines.

:class:`Tracker` keeps the counts and tells a sink, a ``Callable[[str], None]``, one line per event
(what ``edgepack.fleet(progress=print)`` gets, and what the CLI prints when stderr is not a terminal).
:class:`LiveDisplay` is the CLI's rich display for a terminal: a bar, the counts and the last event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Sink = Callable[[str], None]


@dataclass
class Counts:
    total: int
    done: int = 0
    running: int = 0
    cached: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        """Cells with an outcome: passed (built or cached) or failed."""
        return self.done + self.cached + self.failed

    def line(self) -> str:
        return (
            f"[{self.finished}/{self.total}] {self.done} done, {self.running} running, "
            f"{self.cached} cached, {self.failed} failed"
        )


class Tracker:
    """Counts a batch's cells as they change state and reports each change to the sink."""

    def __init__(self, total: int, sink: Sink | None = None) -> None:
        self.counts = Counts(total)
        self.sink = sink
        self._running: set[str] = set()  # a retried cell is started twice but runs once

    def _say(self, event: str) -> None:
        if self.sink is not None:
            self.sink(f"{self.counts.line()}  {event}")

    def cached(self, cell_id: str) -> None:
        self.counts.cached += 1
        self._say(f"{cell_id}: cached")

    def started(self, cell_id: str) -> None:
        self._running.add(cell_id)
        self.counts.running = len(self._running)
        self._say(f"{cell_id}: started")

    def finished(self, cell_id: str, ok: bool, error: str | None = None, seconds: float | None = None) -> None:
        self._running.discard(cell_id)
        self.counts.running = len(self._running)
        if ok:
            self.counts.done += 1
            took = f" in {seconds:.1f} s" if seconds is not None else ""
            self._say(f"{cell_id}: passed{took}")
        else:
            self.counts.failed += 1
            self._say(f"{cell_id}: FAILED {error or ''}".rstrip())


class LiveDisplay:
    """A rich live display (bar, counts, last event) for a terminal; use as a context manager and sink."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("", total=None)  # the total comes with the first line

    def __enter__(self) -> LiveDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, line: str) -> None:
        counts, _, event = line.partition("]")
        done, _, total = counts.lstrip("[").partition("/")
        if "FAILED" in event:  # failures stay on screen above the bar
            self._progress.console.print("✗ " + event.split("  ", 1)[-1], markup=False, highlight=False)
        self._progress.update(self._task, completed=int(done), total=int(total), description=event.strip()[:110])
