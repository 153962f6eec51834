"""Cancelling a running transfer from ``on_kill``, shared by every hook of this package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class CancellableTransfers:
    """Mixin: ``cancel()`` stops the transfer the hook is running, or the next one it starts.

    cancel() runs from on_kill, i.e. inside the SIGTERM handler on the main thread, which may be
    anywhere, even inside ``_running``: so neither side takes a lock. Plain attribute stores are atomic,
    and each side writes its own field before reading the other's, so a cancel is never lost.
    """

    _active: _Cancellable | None = None
    _cancel_requested: bool = False

    def cancel(self) -> None:
        """Stop the running transfer within seconds (from ``on_kill``); its checkpoint stays.

        Safe in a signal handler (takes no lock), and sticky: a transfer this hook starts afterwards is
        cancelled at once, so a kill that lands just before a transfer starts is not lost.
        """
        self._cancel_requested = True
        transfer = self._active
        if transfer is not None:
            transfer.cancel()

    @contextmanager
    def _running(self, transfer: _Cancellable, on_exit: Callable[[], None] | None = None) -> Iterator[None]:
        self._active = transfer
        if self._cancel_requested:
            transfer.cancel()
        try:
            yield
        finally:
            self._active = None
            if on_exit is not None:
                on_exit()
