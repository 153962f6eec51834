"""Upload sources: a local file, or a remote object read by ranges (Blob -> Volume, Volume -> Blob).

A remote source is any ``DownloadSource``: every read is pinned to the version seen when the upload was
planned (If-Match), so a source overwritten mid-way fails the read instead of splicing two versions, and
nothing is staged on local disk (memory stays at parallelism x part size).
"""

from __future__ import annotations

import os
import threading

from airflow_databricks_transfer.engine.checkpoint import RemoteVersion, SourceFingerprint
from airflow_databricks_transfer.engine.errors import (
    ConnectionLostError,
    RemoteChangedError,
    RemoteNotFoundError,
    SourceChangedError,
)
from airflow_databricks_transfer.engine.ports import DownloadSource


def read_exact(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; a short read means the file shrank under us."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise SourceChangedError(f"source ended early at byte {offset + done}: was it truncated?")
        done += n


class _FileReader:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def read_into(self, buf: memoryview, offset: int, cancel: threading.Event | None = None) -> None:
        read_exact(self._fd, buf, offset)

    def close(self) -> None:
        os.close(self._fd)


class LocalFileSource:
    """A local regular file, identified by (path, size, mtime, inode)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.path.abspath(os.fspath(path))

    @property
    def path(self) -> str:
        return self._path

    @property
    def local_path(self) -> str:
        return self._path

    def fingerprint(self) -> SourceFingerprint:
        try:
            fingerprint = SourceFingerprint.of(self._path)
        except FileNotFoundError:
            raise SourceChangedError(f"source file {self._path} does not exist") from None
        if not os.path.isfile(self._path):
            raise SourceChangedError(f"source {self._path} is not a regular file")
        return fingerprint

    def ensure_unchanged(self, fingerprint: SourceFingerprint) -> None:
        fingerprint.ensure_unchanged()

    def reader(self, fingerprint: SourceFingerprint) -> _FileReader:
        return _FileReader(self._path)


def _version_of(remote: RemoteVersion) -> str:
    """What pins a remote version: its ETag, else size and Last-Modified (coarser, but never kinder)."""
    return remote.etag or f"{remote.size}@{remote.last_modified}"


class _RangeSourceReader:
    def __init__(self, source: DownloadSource, pinned: RemoteVersion) -> None:
        self._source, self._pinned = source, pinned

    def read_into(self, buf: memoryview, offset: int, cancel: threading.Event | None = None) -> None:
        try:
            reader = self._source.open_range(offset, len(buf), self._pinned, cancel=cancel)
        except RemoteChangedError as err:
            raise SourceChangedError(
                f"the source {self._source.path} changed during the transfer ({err})"
            ) from err
        except RemoteNotFoundError as err:
            raise SourceChangedError(
                f"the source {self._source.path} disappeared during the transfer"
            ) from err
        try:
            done = 0
            while done < len(buf):
                n = reader.readinto(buf[done:])
                if n == 0:
                    # a short body is a dropped connection (retried), not a changed source
                    raise ConnectionLostError(
                        f"{self._source.path}: the range at {offset} ended after {done} of {len(buf)} bytes"
                    )
                done += n
        finally:
            reader.close()

    def close(self) -> None:
        pass


class RemoteRangeSource:
    """Any ranged remote object as an upload source, pinned to the version first seen."""

    def __init__(self, source: DownloadSource) -> None:
        self._source = source
        self._pinned: RemoteVersion | None = None

    @property
    def path(self) -> str:
        return self._source.path

    @property
    def local_path(self) -> None:
        return None

    def fingerprint(self) -> SourceFingerprint:
        try:
            remote = self._source.stat()
        except RemoteNotFoundError as err:
            raise SourceChangedError(f"source {self._source.path} does not exist ({err})") from err
        self._pinned = remote
        return SourceFingerprint(self._source.path, remote.size, 0, 0, _version_of(remote))

    def ensure_unchanged(self, fingerprint: SourceFingerprint) -> None:
        try:
            now = self._source.stat()
        except RemoteNotFoundError:
            raise SourceChangedError(f"source {self._source.path} disappeared during the transfer") from None
        why = fingerprint.difference(SourceFingerprint(self._source.path, now.size, 0, 0, _version_of(now)))
        if why:
            raise SourceChangedError(f"{why} during the transfer of {self._source.path}")

    def reader(self, fingerprint: SourceFingerprint) -> _RangeSourceReader:
        pinned = self._pinned
        if pinned is None or _version_of(pinned) != fingerprint.version or pinned.size != fingerprint.size:
            raise SourceChangedError(
                f"the source {self._source.path} is not the version this upload planned for"
            )
        return _RangeSourceReader(self._source, pinned)
