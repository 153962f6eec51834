"""The ports the engine drives. Wire clients (``clients/``) implement them; tests may too.

Every method raises only the engine's error tree (``errors.py``), never a library's own exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    IngestCheckpoint,
    RemoteVersion,
    SourceFingerprint,
    UploadCheckpoint,
)

# Called with a byte count before those bytes are sent; may block (a bandwidth limit).
Pace = Callable[[int], None]


@dataclass(frozen=True)
class PresignedUrl:
    """A bearer credential: never log it, never store it (``repr`` hides it)."""

    url: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    expires_at: float = float("inf")


@dataclass(frozen=True)
class UploadSession:
    protocol: Literal["multipart", "resumable"]
    token: str = field(repr=False)


# The body of a single-shot PUT: a local file streamed from disk (path, size), or bytes in memory (a
# small remote source, read first).
SingleShotBody = tuple[str, int] | memoryview


class SourceReader(Protocol):
    """One worker's handle on the source (a file descriptor, or ranged reads of a remote object)."""

    def read_into(self, buf: memoryview, offset: int, cancel: threading.Event | None = None) -> None:
        """Fill ``buf`` with the bytes at ``offset``; SourceChangedError if the source changed or ended."""

    def close(self) -> None: ...


class UploadSource(Protocol):
    """Where an upload's bytes come from: a local file, or a remote ranged source (a blob, a Volume file)."""

    @property
    def path(self) -> str:
        """A credential-free name of the source (a local path, ``azure://...``, ``/Volumes/...``)."""

    @property
    def local_path(self) -> str | None:
        """The local file, when the source is one (a single-shot PUT streams it); None for a remote source."""

    def fingerprint(self) -> SourceFingerprint:
        """What identifies the source now; SourceChangedError when it is missing or not a file."""

    def ensure_unchanged(self, fingerprint: SourceFingerprint) -> None:
        """SourceChangedError unless the source is still the one ``fingerprint`` describes."""

    def reader(self, fingerprint: SourceFingerprint) -> SourceReader:
        """A reader of exactly that version (a remote source pins every read to it)."""


class UploadTarget(Protocol):
    """One destination object; the part loop is the engine's, the two part shapes below are the targets'."""

    @property
    def destination(self) -> str: ...

    def stat(self) -> RemoteVersion | None:
        """The current remote object, or None when there is none."""

    def server_time(self, local: float | None = None) -> float:
        """The store's clock at local time ``local`` (default now): it stamps the Last-Modified that
        provenance checks compare with, and the worker's clock may be skewed against it."""

    def put_single(
        self,
        body: SingleShotBody,
        *,
        overwrite: bool,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> None:
        """Write the whole object in one request."""

    def initiate(self, *, overwrite: bool) -> UploadSession: ...

    def complete(
        self, token: str, parts: Sequence[tuple[int, str]], *, content_md5: bytes | None = None
    ) -> None:
        """Commit the parts in order; ``content_md5`` (the whole object's MD5) is stored where the store
        keeps one. Completing an already completed session again must not fail where the store allows."""

    def abort(self, token: str) -> None: ...

    def delete(self) -> None:
        """Delete the object at the destination (used to withdraw a file this upload wrote torn)."""


class PresignedPartsTarget(UploadTarget, Protocol):
    """Parts go to presigned URLs minted in batches by a control call (the Files API), or as one
    GCS-style resumable upload."""

    def part_urls(self, token: str, first: int, count: int) -> Mapping[int, PresignedUrl]:
        """URLs for parts first..first+count-1; SessionLostError if the session is gone."""

    def put_part(
        self,
        url: PresignedUrl,
        body: memoryview,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> str:
        """Send one part; returns its ETag. ``cancel`` stops a send in flight (``Cancelled``) within
        about a second; ``pace(n)`` is called before each piece of n bytes goes out (a bandwidth limit)."""

    def resumable_url(self, token: str) -> PresignedUrl: ...

    def put_chunk(
        self,
        url: PresignedUrl,
        body: memoryview,
        offset: int,
        total: int | None,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> int | None:
        """Send one resumable chunk; returns the confirmed byte count, or None once the upload is complete."""

    def query_confirmed(self, url: PresignedUrl) -> int | None:
        """Ask how many bytes the server has; None if the upload is already complete."""


@runtime_checkable
class StagedBlocksTarget(UploadTarget, Protocol):
    """Parts are staged as blocks named from the session and part number, then committed as a list
    (Azure Put Block / Put Block List). The store lists staged blocks, so a resume asks it first."""

    def stage_block(
        self,
        token: str,
        part_number: int,
        body: memoryview,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> str:
        """Stage one block (the store verifies its Content-MD5); returns that MD5 (base64) as its ack."""

    def staged_blocks(self, token: str) -> Mapping[int, int]:
        """Part number -> size of this session's blocks the store holds uncommitted."""


class RangeReader(Protocol):
    def readinto(self, buf: memoryview) -> int: ...

    def close(self) -> None: ...


class DownloadSource(Protocol):
    @property
    def path(self) -> str: ...

    def stat(self) -> RemoteVersion:
        """RemoteNotFoundError when missing."""

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> RangeReader:
        """Bytes [start, start+length) of the pinned version; RemoteChangedError if it changed.

        Once ``cancel`` is set, a read blocked on the server ends within about a second (``Cancelled``).
        """

    @property
    def data_pin(self) -> str | None:
        """What the data path itself pins (e.g. the storage ETag of the first ranged response), opaque
        to the engine; None until learnt. Stored in the checkpoint so a resumed try reads that version."""

    def restore_pin(self, pin: str | None) -> None:
        """Pin the data path to ``pin`` (from a checkpoint), or forget the pin (None) for a fresh start."""

    def invalidate_url(self) -> None:
        """Forget a cached presigned URL (after UrlExpiredError)."""


class UploadCheckpointSink(Protocol):
    """Where checkpoints go (the Airflow task state store, a local state dir, memory in tests).

    ``changed`` names what changed since the last save: segment numbers for uploads, chunk numbers
    for downloads (a sink may rewrite only those).
    """

    def save(self, checkpoint: UploadCheckpoint, changed: frozenset[int]) -> None: ...

    def clear(self) -> None: ...


class DownloadCheckpointSink(Protocol):
    def save(self, checkpoint: DownloadCheckpoint, changed: frozenset[int]) -> None: ...

    def clear(self) -> None: ...


class IngestCheckpointSink(Protocol):
    """``changed`` is always empty: an ingest checkpoint is one small value, rewritten whole."""

    def save(self, checkpoint: IngestCheckpoint, changed: frozenset[int]) -> None: ...

    def clear(self) -> None: ...


class RecordSink(Protocol):
    """One open stream into a table (Zerobus). Its offsets are not a cursor: they restart with every
    stream, so the engine checkpoints source positions and only after ``flush`` returned."""

    def send(self, records: Sequence[Any]) -> None:
        """Queue one batch (JSON-able dicts or JSON text, or protobuf bytes); may block while the
        stream's in-flight limit is reached. Raises the engine's errors (RetryableError subclasses for a
        stream that broke, FatalError subclasses for a schema mismatch, a missing table, bad credentials)."""

    def flush(self) -> None:
        """Return once every record sent so far is durably acknowledged by the server; raise otherwise."""

    def close(self) -> None:
        """Flush and end the stream; the sink is not used again (a recovery opens a new one)."""


class NullSink:
    """Keeps nothing: a transfer without resume."""

    def save(self, checkpoint: object, changed: frozenset[int]) -> None:
        pass

    def clear(self) -> None:
        pass
