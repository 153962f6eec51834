"""Worker-thread orchestration shared by the upload and download drivers.

A fixed pool of threads takes items (part or chunk numbers) from one queue; the first failure stops
the others; an exception in the waiting thread itself (Airflow's execution_timeout arrives as one) also
stops them; either way the checkpoint is flushed before anything propagates.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from airflow_databricks_transfer.engine.retry import Cancelled

T = TypeVar("T")


def join_or_stop(threads: list[threading.Thread], stop: threading.Event, flush: Callable[[], None]) -> None:
    """Wait for the workers; if this thread is interrupted meanwhile, stop them and flush first."""
    try:
        for t in threads:
            t.join()
    except BaseException:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        with contextlib.suppress(Exception):
            flush()
        raise


def run_workers(
    items: Iterable[T],
    count: int,
    body: Callable[[Callable[[], T | None]], None],
    *,
    stop: threading.Event,
    flush: Callable[[], None],
    name: str,
    severity: tuple[type[BaseException], ...],
) -> None:
    """Run ``count`` threads of ``body(next_item)`` until the items run out, then flush.

    ``next_item()`` returns None once the queue is empty or ``stop`` is set. If any worker failed (or the
    transfer was cancelled) the most severe error, by ``severity`` order, is raised after all stopped.
    """
    queue = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def next_item() -> T | None:
        if stop.is_set():
            return None
        with lock:
            return next(queue, None)

    def run() -> None:
        try:
            body(next_item)
        except BaseException as err:  # noqa: BLE001 - reported once every worker has stopped
            with lock:
                errors.append(err)
            stop.set()

    threads = [threading.Thread(target=run, name=f"{name}-{i}", daemon=True) for i in range(max(1, count))]
    for t in threads:
        t.start()
    join_or_stop(threads, stop, flush)
    flush()
    if errors:
        raise _most_severe(errors, severity)
    if stop.is_set():
        raise Cancelled(f"{name}: cancelled")


def _most_severe(errors: list[BaseException], severity: tuple[type[BaseException], ...]) -> BaseException:
    for kind in severity:
        for err in errors:
            if isinstance(err, kind) and not isinstance(err, Cancelled):
                return err
    return errors[0]
