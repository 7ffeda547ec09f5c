"""Progress on long work: rich bars on a terminal, periodic one-line reports elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )


class StepProgress:
    """Progress of ``total`` steps: a rich bar on a terminal; elsewhere (CI logs, pipes, files)
    one line each time another ``every`` share of the steps is done, so long work is never
    silent. Use as a context manager and call :meth:`update` with the steps completed."""

    def __init__(self, description: str, total: int, every: float = 0.1,
                 write: Callable[[str], None] | None = None, terminal: bool | None = None):
        self.description = description
        self.total = max(int(total), 0)
        self.every = every
        self.write = write or (lambda line: console.print(line, highlight=False, soft_wrap=True))
        self.terminal = console.is_terminal if terminal is None else terminal
        self._bar: Progress | None = None
        self._task: Any = None
        self._next = every  # next share of the total that prints a line
        self._start = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def update(self, completed: int) -> None:
        if self.total <= 0:
            return
        if self.terminal:
            if self._bar is None:  # started at the first step, after what the work printed first
                self._bar = progress_bar().__enter__()
                self._task = self._bar.add_task(self.description, total=self.total)
            self._bar.update(self._task, completed=completed)
            return
        share = completed / self.total
        if share + 1e-9 < self._next:
            return
        while self._next <= share + 1e-9:  # one line however many shares one update crossed
            self._next += self.every
        elapsed = time.perf_counter() - self._start
        self.write(f"{self.description}: {min(completed, self.total)}/{self.total} "
                   f"({min(share, 1.0):.0%}) in {elapsed:.1f} s")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
