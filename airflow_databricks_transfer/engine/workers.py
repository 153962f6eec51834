"""Worker-thread helpers shared by the upload and download drivers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable


def join_or_stop(threads: list[threading.Thread], stop: threading.Event, flush: Callable[[], None]) -> None:
    """Wait for the workers. An exception raised in this thread meanwhile (Airflow's execution_timeout
    arrives as one) stops them and saves the checkpoint before it propagates."""
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
