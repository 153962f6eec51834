"""Write checkpoints off the data path: coalesce part completions into one write at a time.

A write to the Airflow task state store costs 5-7 ms (and two or three API calls: the value, upload
segments, the XCom progress mirror); done inline after every part it would throttle parallel parts.
Here workers only hand over the latest state; one thread writes whatever is newest, at most once per
``min_interval_s``, so a kill loses at most the parts that finished since the last write (they are sent
again). ``flush`` and ``close`` always write the final state at once, whatever the interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")

log = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL_S = 1.0


class CoalescingSaver(Generic[C]):
    def __init__(
        self,
        write: Callable[[C, frozenset[int]], None],
        name: str = "checkpoint-saver",
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        self._write = write
        self._min_interval_s = min_interval_s
        self._cond = threading.Condition()
        self._pending: C | None = None
        self._dirty: set[int] = set()
        self._writing = False
        self._closed = False
        self._flushing = 0
        self._last_write = float("-inf")
        self._error: BaseException | None = None
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, state: C, changed: int | None = None) -> None:
        with self._cond:
            self._raise_if_failed()
            self._pending = state
            if changed is not None:
                self._dirty.add(changed)
            self._cond.notify_all()

    def flush(self, state: C | None = None, changed: int | None = None) -> None:
        """Write ``state`` (or whatever is pending) now and wait until nothing is pending."""
        with self._cond:
            self._flushing += 1
            try:
                if state is not None:
                    self._pending = state
                    if changed is not None:
                        self._dirty.add(changed)
                self._cond.notify_all()
                while (self._pending is not None or self._writing) and self._error is None:
                    self._cond.wait()
                self._raise_if_failed()
            finally:
                self._flushing -= 1

    def drop(self) -> None:
        """Forget what is pending and wait for a write in progress: for a caller about to delete the
        checkpoint anyway (a finished transfer), where a last write would only cost time."""
        with self._cond:
            self._pending = None
            self._dirty.clear()
            while self._writing:
                self._cond.wait()

    def close(self) -> None:
        """Write what is pending (the final state) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _next(self) -> tuple[C, frozenset[int]] | None:
        """Wait (holding the condition) until a write is due; None once closed with nothing left."""
        while True:
            if self._pending is None:
                if self._closed:
                    return None
                self._cond.wait()
                continue
            if self._closed or self._flushing:
                break
            due = self._last_write + self._min_interval_s - time.monotonic()
            if due <= 0:
                break
            self._cond.wait(due)
        state, dirty = self._pending, frozenset(self._dirty)
        self._pending = None
        self._dirty.clear()
        self._writing = True
        return state, dirty

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next()
            if job is None:
                return
            state, dirty = job
            try:
                self._write(state, dirty)
                self.writes += 1
            except BaseException as err:  # noqa: BLE001 - surfaced to the workers on their next offer/flush
                log.warning("could not save the checkpoint: %s", err)
                with self._cond:
                    self._error = err
            finally:
                with self._cond:
                    self._writing = False
                    self._last_write = time.monotonic()
                    self._cond.notify_all()
