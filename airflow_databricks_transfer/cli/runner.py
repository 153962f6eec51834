"""Runs engine transfers for the command line: Ctrl-C or SIGTERM cancels cleanly, keeping the checkpoint.

The same ``CancellableTransfers`` the Airflow hooks use for ``on_kill``, here driven by signals: the
first signal asks the running transfer to stop (its workers end within seconds and the checkpoint stays
for the next run); a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Protocol

from airflow_databricks_transfer.hooks._running import CancellableTransfers

_log = logging.getLogger("airflow_databricks_transfer.cli.transfer")
# the display shows progress; the engine's INFO progress lines stay out of the terminal
_log.setLevel(logging.WARNING)


class Runner(CancellableTransfers):
    """Transfers of one command; ``cancel()`` (from a signal) stops the running one."""

    log = _log

    def signals(self) -> AbstractContextManager[None]:
        return signals(self)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


@contextmanager
def signals(transfers: Cancellable) -> Iterator[None]:
    """SIGINT/SIGTERM cancel the running transfer (a second SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted and signum == signal.SIGINT:
            raise KeyboardInterrupt
        interrupted = True
        transfers.cancel()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
