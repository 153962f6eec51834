"""Progress display: rich bars on a terminal, plain lines at an interval otherwise (logs, CI, pipes).

Fed by the engine's progress events (``engine/progress.py``), which the engine already throttles to one
per ``progress_interval_s``: the display asks for a short interval on a terminal and the user's on a pipe,
so the transfer's hot path never waits for a redraw. Everything goes to stderr; stdout is for results.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from airflow_databricks_transfer.engine.progress import (
    MiB,
    ProgressEvent,
    Subscriber,
    _duration,
    _size,
    log_progress,
)

TTY_INTERVAL_S = 0.2


def _plain_logger(stream: IO[str]) -> logging.Logger:
    log = logging.getLogger("airflow_databricks_transfer.cli.progress")
    log.propagate = False
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    return log


class Display:
    """Progress of one command: a bar per file (and one overall bar for a tree) on a terminal, plain
    lines at an interval otherwise (for a tree, only the overall line: 20,000 files make no log)."""

    def __init__(
        self, *, enabled: bool = True, interval_s: float = 5.0, stream: IO[str] | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._plain = _plain_logger(self.stream) if enabled and not self.tty else None

    @property
    def engine_interval_s(self) -> float:
        """What to pass as the engine's ``progress_interval_s``."""
        return TTY_INTERVAL_S if self.tty else self.interval_s

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Display:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._rich = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=30),
                TaskProgressColumn(),
                TextColumn("{task.fields[sizes]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(file=self.stream),
                refresh_per_second=5,
            )
            self._rich.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    # ------------------------------------------------------------------ subscribers
    def subscriber(self, label: str) -> Subscriber:
        """Progress events of one transfer (one file)."""
        if self._plain is not None:
            return log_progress(self._plain)
        return self._bar(label, keep=True) if self.tty else _ignore

    def tree(self, label: str) -> tuple[Subscriber, Callable[[str], list[Subscriber]]]:
        """(the overall subscriber, per-file subscribers) of a tree transfer such as a sync."""
        if self._plain is not None:
            return log_progress(self._plain), lambda rel: []
        if not self.tty:
            return _ignore, lambda rel: []
        return self._bar(label, keep=True), lambda rel: [self._bar(rel, keep=False)]

    def _bar(self, label: str, *, keep: bool) -> Subscriber:
        """A rich bar fed by events; ``keep`` False: removed when its transfer ends (a file of a tree)."""
        key = f"keep:{label}" if keep else label

        def emit(event: ProgressEvent) -> None:
            rich = self._rich
            if rich is None:
                return
            with self._lock:
                task = self._tasks.get(key)
                if task is None:
                    if event.final and not keep:
                        return
                    task = rich.add_task(label, total=max(event.bytes_total, 1), sizes="", rate="", eta="--")
                    self._tasks[key] = task
                if event.final and not keep:
                    del self._tasks[key]
            if event.final and not keep:
                rich.remove_task(task)
                return
            counts = f"{event.parts_done}/{event.parts_total} files, " if event.unit == "file" else ""
            rich.update(
                task,
                total=max(event.bytes_total, 1),
                completed=event.bytes_done,
                sizes=f"{counts}{_size(event.bytes_done)} of {_size(event.bytes_total)}",
                rate=f"{event.rate_bps / MiB:.1f} MiB/s",
                eta="--" if event.eta_s is None else _duration(event.eta_s),
            )

        return emit


def _ignore(event: ProgressEvent) -> None:
    return None
