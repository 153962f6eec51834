"""Cancelling a running transfer from ``on_kill``, shared by every hook of this package."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions, DownloadResult
from airflow_databricks_transfer.engine.ports import (
    DownloadCheckpointSink,
    DownloadSource,
    UploadCheckpointSink,
    UploadSource,
    UploadTarget,
)
from airflow_databricks_transfer.engine.progress import Subscriber, log_progress
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions, UploadResult


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

    def _progress_logger(self) -> logging.Logger:
        """The hook's task logger (Airflow's LoggingMixin ``log``), where progress lines go."""
        return cast(logging.Logger, cast(Any, self).log)

    def _close_data_path(self) -> None:
        """Called when a transfer ends (a hook closes its data-path connections here)."""

    def run_upload(
        self,
        target: UploadTarget,
        source: UploadSource | str | os.PathLike[str],
        options: UploadOptions | None,
        *,
        kind: str,
        checkpoint: UploadCheckpoint | None,
        sink: UploadCheckpointSink | None,
        subscribers: list[Subscriber] | None,
    ) -> UploadResult:
        """One upload with progress lines in the task log, cancellable from ``on_kill``."""
        uploader = Uploader(
            target,
            source,
            options,
            sink=sink,
            subscribers=[log_progress(self._progress_logger()), *(subscribers or [])],
            kind=kind,
        )
        with self._running(uploader, self._close_data_path):
            return uploader.run(checkpoint)

    def run_download(
        self,
        source: DownloadSource,
        local_path: str,
        options: DownloadOptions | None,
        *,
        kind: str,
        checkpoint: DownloadCheckpoint | None,
        sink: DownloadCheckpointSink | None,
        subscribers: list[Subscriber] | None,
    ) -> DownloadResult:
        """One download with progress lines in the task log, cancellable from ``on_kill``."""
        downloader = Downloader(
            source,
            local_path,
            options,
            sink=sink,
            subscribers=[log_progress(self._progress_logger()), *(subscribers or [])],
            kind=kind,
        )
        with self._running(downloader, self._close_data_path):
            return downloader.run(checkpoint)

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
