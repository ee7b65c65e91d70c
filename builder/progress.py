"""Progress and elapsed time for long steps (build, convert, upload, boot, probe).

On a terminal a step is a live rich line (spinner or bar, elapsed time, the
latest note); in CI, in a pipe or with ``AURORA_QUIET`` set it prints only one
summary line when the step ends. Everything goes to stderr, so stdout stays
clean for ``--json``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

_console = Console(stderr=True, highlight=False)


def enabled() -> bool:
    """Live progress only for a person watching a terminal."""
    if os.environ.get("CI") or os.environ.get("AURORA_QUIET"):
        return False
    return sys.stderr.isatty()


class Step:
    """A handle on one running step: count bytes or items, or say what it is doing."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task
        self.last_note = ""

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        self.last_note = text
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, note=text)


def _columns(total: int | None) -> list[object]:
    columns: list[object] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), DownloadColumn()]
    columns += [TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}")]
    return columns


@contextmanager
def step(label: str, total: int | None = None) -> Iterator[Step]:
    """Run a block as a named step; always ends with one line saying how long it took."""
    start = time.monotonic()
    outcome = "failed after"
    try:
        if enabled():
            columns = _columns(total)
            with Progress(*columns, console=_console, transient=True) as progress:  # type: ignore[arg-type]
                yield Step(progress, progress.add_task(label, total=total, note=""))
        else:
            yield Step(None, None)
        outcome = "done in"
    finally:
        took = time.monotonic() - start
        _console.print(f"{label}: {outcome} {took:.1f} s", soft_wrap=True)
