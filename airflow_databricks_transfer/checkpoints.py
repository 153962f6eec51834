"""Where transfer checkpoints live in Airflow.

Airflow deletes every XCom of a task instance when its next try starts, so XCom cannot carry a
checkpoint into a retry. The durable copy goes to the Airflow 3.3 task state store (shared by all tries
of a task instance, on any worker, kept with ``NEVER_EXPIRE``); XCom key ``checkpoint`` carries a
credential-free progress view so the UI shows how far a running or failed try got.

An ingest checkpoint (Zerobus) is one small value: the source position after the last acknowledged
record, rewritten after every acknowledged flush.

Next to the checkpoint, ``<key>.ui`` holds the per-try record the UI's Transfer tab shows (see
``ui_record.py``); it is deleted with the checkpoint when the task succeeds, and its tries and result
go into the final XCom ``checkpoint`` value.

Upload checkpoints are split over keys: ``<key>`` holds the head and ``<key>.seg.<i>`` each segment of
1,000 parts, so a finished part rewrites one small value, and each value stays under the state store's
64 KiB advisory limit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from airflow.sdk import NEVER_EXPIRE  # type: ignore[attr-defined]  # lazily exported

from airflow_databricks_transfer.engine.checkpoint import (
    SCHEMA,
    DownloadCheckpoint,
    IngestCheckpoint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.engine.errors import CheckpointError

log = logging.getLogger(__name__)

XCOM_KEY = "checkpoint"
_C = TypeVar("_C", DownloadCheckpoint, IngestCheckpoint)
_warned = {"no_store": False}

# One task state store or XCom call at a time from this process's threads (the checkpoint saver, the
# UI recorder's progress writes, the task's own thread). Under ``airflow dags test`` the in-process
# supervisor comms removes ``task_runner.SUPERVISOR_COMMS`` while it answers a request, so a call from a
# second thread at that moment fails with "cannot import name 'SUPERVISOR_COMMS'" (the real supervisor
# comms has a lock of its own). Reentrant: a call never waits on itself.
_COMMS_LOCK = threading.RLock()


def push_xcom(ti: Any, key: str, value: Any) -> None:
    """An XCom push from any of the transfer's threads, one at a time with the state store calls."""
    with _COMMS_LOCK:
        ti.xcom_push(key=key, value=value)


class _OneAtATime:
    """The task state store accessor, each call under :data:`_COMMS_LOCK`."""

    def __init__(self, store: Any) -> None:
        self._inner = store

    def get(self, key: str) -> Any:
        with _COMMS_LOCK:
            return self._inner.get(key)

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        with _COMMS_LOCK:
            self._inner.set(key, value, **kwargs)

    def delete(self, key: str) -> None:
        with _COMMS_LOCK:
            self._inner.delete(key)


class TaskCheckpointStore:
    """Checkpoint sink and loader for one task instance (upload, download or ingest)."""

    def __init__(
        self, context: Mapping[str, Any], key: str = "checkpoint", *, mirror_to_xcom: bool = True
    ) -> None:
        self.key = key
        store = context.get("task_state_store")
        self._store = _OneAtATime(store) if store is not None else None
        self._ti = context.get("ti")
        self._mirror = mirror_to_xcom
        self._segments_written: int | None = None
        if self._store is None and not _warned["no_store"]:
            _warned["no_store"] = True
            log.warning(
                "This Airflow has no task state store (it arrived in Airflow 3.3): transfers run without "
                "resuming across task tries; progress is still shown in XCom."
            )

    @property
    def durable(self) -> bool:
        return self._store is not None

    # ------------------------------------------------------------------ load
    def _raw(self) -> Any:
        if self._store is None:
            return None
        return self._store.get(self.key)

    def load_upload(self, kind: str = "files_api.upload") -> tuple[UploadCheckpoint | None, str | None]:
        """The stored upload checkpoint of ``kind``, or (None, why it was discarded)."""
        head = self._raw()
        if head is None:
            return None, None
        try:
            if not isinstance(head, Mapping):
                raise CheckpointError("checkpoint is not a JSON object")
            if head.get("schema") != SCHEMA:
                raise CheckpointError(f"not a checkpoint of this package (schema {head.get('schema')!r})")
            if head.get("kind") != kind:
                raise CheckpointError(f"checkpoint is a {head.get('kind')!r}, expected {kind!r}")
            count = head.get("segments")
            if not isinstance(count, int) or not 0 < count <= 1000:
                raise CheckpointError(f"checkpoint head has an invalid segment count {count!r}")
            assert self._store is not None
            segments = [self._store.get(f"{self.key}.seg.{i}") for i in range(count)]
            if any(s is None for s in segments):
                raise CheckpointError("a checkpoint segment is missing")
            cp = UploadCheckpoint.from_records(head, segments, kind)
            self._segments_written = count
            return cp, None
        except CheckpointError as err:
            self.clear()
            return None, str(err)

    def load_download(self, kind: str = "files_api.download") -> tuple[DownloadCheckpoint | None, str | None]:
        """The stored download checkpoint of ``kind``, or (None, why it was discarded)."""
        return self._load_one(lambda raw: DownloadCheckpoint.from_dict(raw, kind))

    def load_ingest(self, kind: str = "zerobus.ingest") -> tuple[IngestCheckpoint | None, str | None]:
        """The stored ingest checkpoint, or (None, why it was discarded)."""
        return self._load_one(lambda raw: IngestCheckpoint.from_dict(raw, kind))

    def _load_one(self, parse: Callable[[Mapping[str, Any]], _C]) -> tuple[_C | None, str | None]:
        """A checkpoint kept as one value (downloads, ingests); a corrupt or foreign one is cleared."""
        raw = self._raw()
        if raw is None:
            return None, None
        try:
            if not isinstance(raw, Mapping):
                raise CheckpointError("checkpoint is not a JSON object")
            return parse(raw), None
        except CheckpointError as err:
            self.clear()
            return None, str(err)

    # ------------------------------------------------------------------ sink protocol
    def save(
        self,
        checkpoint: UploadCheckpoint | DownloadCheckpoint | IngestCheckpoint,
        changed: frozenset[int] = frozenset(),
    ) -> None:
        if self._store is not None:
            retention = NEVER_EXPIRE
            if isinstance(checkpoint, UploadCheckpoint):
                count = checkpoint.segment_count
                first_write = self._segments_written != count
                segments = range(count) if first_write else sorted(changed)
                for i in segments:
                    self._store.set(f"{self.key}.seg.{i}", checkpoint.segment_record(i), retention=retention)
                self._store.set(self.key, checkpoint.head_record(), retention=retention)
                self._segments_written = count
            else:
                self._store.set(self.key, checkpoint.to_dict(), retention=retention)
        if self._mirror and self._ti is not None:
            with _COMMS_LOCK:
                self._ti.xcom_push(key=XCOM_KEY, value=checkpoint.progress_view())

    def finish(self, kind: str, result: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> None:
        """After success: delete the checkpoint and the UI record (a Clear must start over) and show
        "done" in XCom, with ``summary`` (the UI record's ``tries`` and ``result``) when given."""
        self.clear()
        self.delete_ui()
        if self._mirror and self._ti is not None:
            keys = ("destination", "table", "source", "bytes", "records")
            done = {k: result[k] for k in keys if k in result}
            value = {"kind": kind, **done, "phase": "done", "percent": 100.0, **(summary or {})}
            with _COMMS_LOCK:
                self._ti.xcom_push(key=XCOM_KEY, value=value)

    # ------------------------------------------------------------------ the UI record
    @property
    def ui_key(self) -> str:
        """Where the per-try UI record lives: ``<checkpoint key>.ui``."""
        return f"{self.key}.ui"

    def read_ui(self) -> Any:
        return None if self._store is None else self._store.get(self.ui_key)

    def write_ui(self, record: Mapping[str, Any]) -> None:
        if self._store is not None:
            self._store.set(self.ui_key, dict(record), retention=NEVER_EXPIRE)

    def delete_ui(self) -> None:
        if self._store is not None:
            self._store.delete(self.ui_key)

    def clear(self) -> None:
        """Forget the checkpoint (after success, or a fatal error) so a Clear starts from scratch."""
        if self._store is None:
            return
        head = self._store.get(self.key)
        count = head.get("segments") if isinstance(head, Mapping) else None
        self._store.delete(self.key)
        for i in range(count if isinstance(count, int) and 0 < count <= 1000 else 0):
            self._store.delete(f"{self.key}.seg.{i}")
        self._segments_written = None


class TaskFileCheckpoints:
    """Per-file upload checkpoints of a sync, one task state store key per large file in flight.

    A sync may have several multipart uploads at once; each gets ``<key>.file.<digest of its path>``
    (and that key's segments), so a retried sync resumes each half-sent large file where it stopped.
    A finished file's checkpoint is deleted by its upload; only unfinished ones stay for the retry.
    """

    def __init__(self, context: Mapping[str, Any], key: str = "checkpoint") -> None:
        self._context = context
        self.key = key

    def _store(self, rel: str) -> TaskCheckpointStore:
        digest = hashlib.sha256(rel.encode()).hexdigest()[:20]
        return TaskCheckpointStore(self._context, f"{self.key}.file.{digest}", mirror_to_xcom=False)

    def load(self, rel: str) -> tuple[UploadCheckpoint | None, str | None]:
        return self._store(rel).load_upload()

    def sink(self, rel: str) -> TaskCheckpointStore:
        return self._store(rel)
