"""Progress display: rich bars on a terminal, plain lines at an interval otherwise (logs, CI, pipes).

Fed by the engine's progress events (``engine/progress.py``), which the engine already throttles to one
per ``progress_interval_s``: the display asks for a short interval on a terminal and the user's on a pipe,
so the transfer's hot path never waits for a redraw. Everything goes to stderr; stdout is for results.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
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
    """Progress of one command. ``tree``: many files, so one overall bar (or line) with file counts, and
    a bar per file only while it runs."""

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
        self._overall: Any = None
        self._tree_files = 0
        self._tree_bytes = 0
        self._done_files = 0
        self._file_bytes: dict[str, int] = {}
        self._finished_bytes = 0
        self._start = time.monotonic()
        self._last_line = self._start
        self._plain = _plain_logger(self.stream) if enabled and not self.tty else None

    @property
    def engine_interval_s(self) -> float:
        """What to pass as the engine's ``progress_interval_s``."""
        return TTY_INTERVAL_S if self.tty else self.interval_s

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Display:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[sizes]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(file=self.stream),
                transient=False,
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

    # ------------------------------------------------------------------ trees
    def start_tree(self, label: str, files: int, total_bytes: int) -> None:
        """Announce a tree transfer of ``files`` files: an overall bar, per-file bars only while running."""
        with self._lock:
            self._tree_files, self._tree_bytes = files, total_bytes
            if self._rich is not None:
                self._overall = self._rich.add_task(
                    label, total=max(total_bytes, 1), sizes="", rate="", eta="--"
                )

    def file_done(self, label: str, nbytes: int) -> None:
        """A file of the tree finished (uploaded, skipped or failed): counts toward the overall bar."""
        with self._lock:
            self._done_files += 1
            self._file_bytes.pop(label, None)
            self._finished_bytes += nbytes
            task = self._tasks.pop(label, None)
            if task is not None and self._rich is not None:
                self._rich.remove_task(task)
        self._overall_update(force=self._done_files == self._tree_files)

    def _overall_update(self, *, force: bool = False) -> None:
        with self._lock:
            done = self._finished_bytes + sum(self._file_bytes.values())
            elapsed = time.monotonic() - self._start
            rate = done / elapsed if elapsed > 0 else 0.0
            left = max(0, self._tree_bytes - done)
            eta = _duration(left / rate) if rate > 0 else "--"
            files = f"{self._done_files}/{self._tree_files} files"
            if self._rich is not None and self._overall is not None:
                self._rich.update(
                    self._overall,
                    completed=done,
                    sizes=f"{files}, {_size(done)} of {_size(self._tree_bytes)}",
                    rate=f"{rate / MiB:.1f} MiB/s",
                    eta=eta,
                )
                return
            now = time.monotonic()
            if self._plain is None or (not force and now - self._last_line < self.interval_s):
                return
            self._last_line = now
            pct = 100.0 * done / self._tree_bytes if self._tree_bytes else 100.0
        self._plain.info(
            "overall: %5.1f%% (%s, %s of %s) %.1f MiB/s, ETA %s",
            pct,
            files,
            _size(done),
            _size(self._tree_bytes),
            rate / MiB,
            eta,
        )

    # ------------------------------------------------------------------ per file
    def subscriber(self, label: str) -> Subscriber:
        """Progress events of one file (one transfer)."""
        if not self.enabled:
            return _ignore
        if self._rich is None:
            if self._tree_files:
                return self._tree_plain(label)
            assert self._plain is not None
            return log_progress(self._plain)
        return self._rich_subscriber(label)

    def _tree_plain(self, label: str) -> Subscriber:
        def emit(event: ProgressEvent) -> None:
            with self._lock:
                self._file_bytes[label] = event.bytes_done
            self._overall_update()

        return emit

    def _rich_subscriber(self, label: str) -> Subscriber:
        def emit(event: ProgressEvent) -> None:
            rich = self._rich
            if rich is None:
                return
            with self._lock:
                task = self._tasks.get(label)
                if task is None and not (event.final and self._tree_files):
                    task = rich.add_task(label, total=max(event.bytes_total, 1), sizes="", rate="", eta="--")
                    self._tasks[label] = task
                if self._tree_files:
                    self._file_bytes[label] = event.bytes_done
            if task is not None:
                rich.update(
                    task,
                    total=max(event.bytes_total, 1),
                    completed=event.bytes_done,
                    sizes=f"{_size(event.bytes_done)} of {_size(event.bytes_total)}",
                    rate=f"{event.rate_bps / MiB:.1f} MiB/s",
                    eta="--" if event.eta_s is None else _duration(event.eta_s),
                )
            if self._tree_files:
                self._overall_update()

        return emit


def _ignore(event: ProgressEvent) -> None:
    return None
