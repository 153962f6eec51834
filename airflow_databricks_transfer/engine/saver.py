"""Write checkpoints off the data path: coalesce part completions into one write at a time.

A write to the Airflow task state store costs 5-7 ms; done inline after every part it would throttle
parallel parts. Here workers only hand over the latest state; one thread writes whatever is newest,
so a kill loses at most the parts that finished since the last write (they are sent again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")

log = logging.getLogger(__name__)


class CoalescingSaver(Generic[C]):
    def __init__(self, write: Callable[[C, frozenset[int]], None], name: str = "checkpoint-saver") -> None:
        self._write = write
        self._cond = threading.Condition()
        self._pending: C | None = None
        self._dirty: set[int] = set()
        self._writing = False
        self._closed = False
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
            if state is not None:
                self._pending = state
                if changed is not None:
                    self._dirty.add(changed)
                self._cond.notify_all()
            while (self._pending is not None or self._writing) and self._error is None:
                self._cond.wait()
            self._raise_if_failed()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                state, dirty = self._pending, frozenset(self._dirty)
                self._pending = None
                self._dirty.clear()
                self._writing = True
            try:
                assert state is not None
                self._write(state, dirty)
                self.writes += 1
            except BaseException as err:  # noqa: BLE001 - surfaced to the workers on their next offer/flush
                log.warning("could not save the checkpoint: %s", err)
                with self._cond:
                    self._error = err
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
