"""The per-try record behind the UI's Transfer tab: task state store key ``<checkpoint_key>.ui``.

XCom is wiped when each try starts, so what each try did (when it ran, what it resumed, what it sent,
why it failed) lives in the task state store next to the checkpoint, with the same rules: one JSON
value, at most 32 KiB, no credential and no URL query, the last 20 tries. The done map is not in it:
the UI builds that from the checkpoint itself. On success the record is deleted with the checkpoint
and its tries and result go into the final XCom ``checkpoint`` value.

Unit numbering in ``live.inflight``: as in the checkpoints. Upload parts and blocks (``part``, and the
sequential ``chunk`` of a resumable upload) are 1-based part numbers; download chunks (``chunk`` of a
``*.download`` kind) are 0-based indexes as in ``DownloadCheckpoint.done_chunks``. Files (sync) and
batches (ingest) have no identity across tries: ``inflight`` stays ``[]`` and ``inflight_count`` says
how many are in flight. ``inflight_count`` is written for every unit.

A recorder never raises into the transfer: a failed write is logged once and ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    IngestCheckpoint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.engine.progress import ProgressEvent, Subscriber

log = logging.getLogger(__name__)

SCHEMA = "airflow-databricks-transfer/ui"
VERSION = 1
MAX_TRIES = 20
MAX_ERROR_CHARS = 500
MAX_RECORD_BYTES = 32 * 1024
LIVE_INTERVAL_S = 2.0
#: units without an identity across tries: in flight as a count only
COUNT_ONLY_UNITS = frozenset({"file", "batch"})
_MAX_INFLIGHT = 256  # a list longer than any sane parallelism is cut (inflight_count stays exact)
_MAX_TEXT = 1000
_URL_QUERY = re.compile(r"(https?://[^\s\"'?<>]+)\?[^\s\"'<>]*")


def scrub(text: str, limit: int = _MAX_TEXT) -> str:
    """Redact as the logs do: URL queries (presigned URLs, SAS) and Airflow's masked secrets; cut."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    with contextlib.suppress(Exception):  # Airflow's secrets masker, when running under Airflow
        from airflow.sdk.log import redact  # type: ignore[attr-defined]  # noqa: PLC0415

        text = str(redact(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(error: BaseException | str) -> str:
    """``Type: message`` of a failed try, redacted and at most 500 characters."""
    if isinstance(error, BaseException):
        message = str(error)
        error = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return scrub(error, MAX_ERROR_CHARS)


def _phase_of(kind: str) -> str:
    if kind.endswith(".download"):
        return "downloading"
    if kind in ("azure_blob.to_volume", "volume.to_azure_blob"):
        return "copying"
    if kind.endswith(".ingest"):
        return "ingesting"
    if kind == "volume_sync":
        return "syncing"
    return "uploading"


def _bounded_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result summary without lists (a sync's failures are in its own XCom) and with short strings."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, str):
            out[str(key)] = scrub(value, 300)
        elif value is None or isinstance(value, (bool, int, float)):
            out[str(key)] = value
        elif isinstance(value, Mapping) and all(
            isinstance(v, (str, int, float, bool)) or v is None for v in value.values()
        ):
            out[str(key)] = {str(k): scrub(v, 300) if isinstance(v, str) else v for k, v in value.items()}
    return out


class _Peekable(Protocol):
    def peek(self, wait_s: float = 1.0) -> ProgressEvent | None: ...


class TransferRecorder:
    """Owns the ``.ui`` key of one task instance's transfer: ``start_try``, ``subscriber``, ``end_try``.

    ``cumulative`` (the sync): a retry plans only what is still missing, so the totals stay those of
    the first plan and the files and bytes the earlier tries finished count as resumed.
    """

    def __init__(
        self,
        context: Mapping[str, Any],
        checkpoint_key: str = "checkpoint",
        *,
        kind: str,
        source: str,
        destination: str,
        unit: str,
        parallelism: int | None = None,
        cumulative: bool = False,
        interval_s: float = LIVE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        store: TaskCheckpointStore | None = None,
    ) -> None:
        self._store = store or TaskCheckpointStore(context, checkpoint_key, mirror_to_xcom=False)
        ti = context.get("ti")
        try_number = getattr(ti, "try_number", None)
        self._try_number = try_number if isinstance(try_number, int) else None
        self.kind = kind
        self.source = scrub(str(source))
        self.destination = scrub(str(destination))
        self.unit = unit
        self.parallelism = parallelism
        self.cumulative = cumulative
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._record: dict[str, Any] | None = None
        self._entry: dict[str, Any] | None = None
        self._base_units = 0
        self._base_bytes = 0
        self._last_write = float("-inf")
        self._warned = False
        self._source: _Peekable | None = None  # the running tracker (set by it, see ``subscriber``)
        self._killed: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start_try(
        self,
        *,
        resumed_units: int | None = 0,
        resumed_bytes: int | None = 0,
        units_total: int | None = None,
        bytes_total: int | None = None,
        discarded: str | None = None,
    ) -> None:
        """A new tries[] entry (what the checkpoint loaded resumes, why one was discarded), written now."""
        resumed_units, resumed_bytes = resumed_units or 0, resumed_bytes or 0
        with self._lock:
            record = self._load()
            tries = [t for t in record["tries"] if isinstance(t, dict)]
            number = self._try_number
            if number is None:  # no task instance (tests, the CLI): the next one after the record's
                numbers = [n for t in tries if isinstance(n := t.get("try_number"), int)]
                number = max(numbers, default=0) + 1
            tries = [t for t in tries if t.get("try_number") != number]
            record.update(
                kind=self.kind,
                source=self.source,
                destination=self.destination,
                unit=self.unit,
                parallelism=self.parallelism,
                result=None,
            )
            if units_total is not None and not self.cumulative:
                record["units_total"] = units_total
            if bytes_total is not None and not self.cumulative:
                record["bytes_total"] = bytes_total
            now = self._clock()
            self._entry = {
                "try_number": number,
                "started_at": now,
                "ended_at": None,
                "state": "running",
                "resumed_units": resumed_units,
                "resumed_bytes": resumed_bytes,
                "sent_units": 0,
                "sent_bytes": 0,
                "discarded": scrub(discarded, MAX_ERROR_CHARS) if discarded else None,
                "error": None,
            }
            tries.append(self._entry)
            record["tries"] = tries[-MAX_TRIES:]
            record["live"] = self._live(now, "starting", resumed_bytes, resumed_units, (), 0.0, None)
            self._record = record
            if self.cumulative and units_total is not None and bytes_total is not None:
                self._set_totals(units_total, bytes_total)
            self._write()
            self._last_write = float("-inf")  # the first event (it brings the totals) goes out at once

    def set_totals(self, units_total: int, bytes_total: int) -> None:
        """This try's plan (the sync's files to send, known after ``start_try``); written now."""
        with self._lock:
            if self._record is not None and self._entry is not None:
                self._set_totals(units_total, bytes_total)
                self._write()
                self._last_write = float("-inf")  # the first event goes out at once

    def _set_totals(self, units_total: int, bytes_total: int) -> None:
        """Cumulative: a retry that plans less than the first plan resumed the difference."""
        assert self._record is not None and self._entry is not None
        record, entry = self._record, self._entry
        prev_units, prev_bytes = record.get("units_total"), record.get("bytes_total")
        earlier = len(record["tries"]) > 1
        if (
            self.cumulative
            and earlier
            and isinstance(prev_units, int)
            and isinstance(prev_bytes, int)
            and prev_units >= units_total
            and prev_bytes >= bytes_total
        ):
            self._base_units, self._base_bytes = prev_units - units_total, prev_bytes - bytes_total
            units_total, bytes_total = prev_units, prev_bytes
        record["units_total"], record["bytes_total"] = units_total, bytes_total
        entry["resumed_units"] = entry["resumed_units"] + self._base_units
        entry["resumed_bytes"] = entry["resumed_bytes"] + self._base_bytes
        live = record.get("live")
        if isinstance(live, dict):
            live["units_done"] = entry["resumed_units"]
            live["bytes_done"] = entry["resumed_bytes"]

    def delete(self) -> None:
        """Drop the record (after success, when no TaskCheckpointStore.finish does it)."""
        try:
            self._store.delete_ui()
        except Exception as err:  # noqa: BLE001 - the UI record must never fail a transfer
            self._warn(err)

    def subscriber(self) -> Subscriber:
        """Live progress for the record, at most one write per ``interval_s`` (the final event always)."""

        def on_event(event: ProgressEvent) -> None:
            self.update(event)

        def attach(source: _Peekable) -> None:
            self._source = source

        on_event.interval_s = self.interval_s  # type: ignore[attr-defined]  # the tracker paces it
        on_event.attach = attach  # type: ignore[attr-defined]  # end_try peeks at the latest state
        return on_event

    def update(self, event: ProgressEvent, *, write: bool = True) -> None:
        """Fold one progress event into the record; written if ``interval_s`` has passed or it is final."""
        with self._lock:
            if self._record is None or self._entry is None or self._entry["ended_at"] is not None:
                return
            now = self._clock()
            record, entry = self._record, self._entry
            if self.unit == "batch":  # an ingest: batches acknowledged, the resumed ones included
                done = int(getattr(event, "batches_done", 0))
                resumed = int(getattr(event, "batches_resumed", 0))
                record["records_done"] = int(getattr(event, "records_done", 0))
            else:
                done, resumed = event.parts_done, event.parts_resumed
            if self.cumulative:  # totals are the first plan's; this try's events count from 0
                done += self._base_units
                resumed += self._base_units
            elif event.parts_total > 0 and self.unit != "batch":
                record["units_total"] = event.parts_total
            if not self.cumulative:
                record["bytes_total"] = event.bytes_total
            bytes_done = event.bytes_done + self._base_bytes
            entry["resumed_units"] = resumed
            entry["resumed_bytes"] = event.bytes_resumed + self._base_bytes
            entry["sent_units"] = max(0, done - resumed)
            entry["sent_bytes"] = max(0, event.bytes_sent)
            phase = "completing" if event.final else _phase_of(self.kind)
            record["live"] = self._live(
                now, phase, bytes_done, done, event.inflight, event.rate_bps, event.eta_s
            )
            if write and (event.final or now - self._last_write >= self.interval_s):
                self._write()

    def mark_killed(self, reason: str = "Killed: the task was stopped (on_kill)") -> None:
        """From ``on_kill``: no I/O here (it runs in the SIGTERM handler, which may have interrupted this
        thread inside a state store call); the error that then escapes ``execute`` is recorded under
        ``reason``."""
        self._killed = reason

    def end_try(
        self,
        error: BaseException | str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Close this try: failed with ``error``, or success with ``result``.

        Returns the record without ``live``, ``schema`` and ``version`` (display fields, ``tries``,
        ``result``) for the final XCom value. On success nothing is written (the caller deletes the key
        with the checkpoint). A closed try stays as it was."""
        source = self._source
        if source is not None and error is not None:  # a failed try: what it did since the last event
            latest = source.peek(1.0)  # bounded: a worker stuck holding the tracker must not hang this
            if latest is not None:
                self.update(latest, write=False)
        with self._lock:
            if self._record is None or self._entry is None:
                return {}
            record, entry = self._record, self._entry
            if entry["ended_at"] is None:
                now = self._clock()
                entry["ended_at"] = now
                live = dict(record.get("live") or {})
                live["updated_at"] = now
                live["inflight"], live["inflight_count"], live["rate_bps"], live["eta_s"] = [], 0, 0.0, None
                if error is None:
                    entry["state"] = "success"
                    record["result"] = _bounded_result(result or {})
                    restarted = record["result"].get("restarted_reason")
                    if entry["discarded"] is None and isinstance(restarted, str):  # the engine's own
                        entry["discarded"] = scrub(restarted, MAX_ERROR_CHARS)
                    live["phase"] = "done"
                else:
                    entry["state"] = "failed"
                    text = error_text(error)
                    entry["error"] = error_text(f"{self._killed}; {text}") if self._killed else text
                    live["phase"] = "failed"
                record["live"] = live
                if error is not None:
                    self._write()
            shown = ("kind", "source", "destination", "unit", "units_total", "bytes_total", "parallelism")
            return {
                **{k: record.get(k) for k in shown},
                "tries": list(record["tries"]),
                "result": record.get("result"),
            }

    # ------------------------------------------------------------------ internals
    def _live(
        self,
        now: float,
        phase: str,
        bytes_done: int,
        units_done: int,
        inflight: tuple[int, ...] | list[int],
        rate_bps: float,
        eta_s: float | None,
    ) -> dict[str, Any]:
        count_only = self.unit in COUNT_ONLY_UNITS
        return {
            "try_number": self._entry["try_number"] if self._entry else None,
            "updated_at": now,
            "phase": phase,
            "bytes_done": bytes_done,
            "units_done": units_done,
            "inflight": [] if count_only else list(inflight[:_MAX_INFLIGHT]),
            "inflight_count": len(inflight),
            "rate_bps": round(float(rate_bps), 1),
            "eta_s": None if eta_s is None else round(float(eta_s), 1),
        }

    def _load(self) -> dict[str, Any]:
        """The stored record of this kind, or a fresh one (a foreign or unreadable one is replaced)."""
        try:
            raw = self._store.read_ui()
        except Exception as err:  # noqa: BLE001 - the UI record must never fail a transfer
            self._warn(err)
            raw = None
        if (
            isinstance(raw, Mapping)
            and raw.get("schema") == SCHEMA
            and raw.get("version") == VERSION
            and raw.get("kind") == self.kind
            and isinstance(raw.get("tries"), list)
        ):
            return dict(raw)
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "kind": self.kind,
            "source": self.source,
            "destination": self.destination,
            "unit": self.unit,
            "units_total": None,
            "bytes_total": None,
            "parallelism": self.parallelism,
            "live": None,
            "tries": [],
            "result": None,
        }

    def _write(self) -> None:
        """Store the record (under the lock), cut to fit 32 KiB; a failure is logged once, then ignored."""
        assert self._record is not None
        self._last_write = self._clock()
        try:
            self._store.write_ui(fit(self._record))
        except Exception as err:  # noqa: BLE001 - the UI record must never fail a transfer
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "Could not write the transfer's UI record (the transfer goes on): %s", scrub(str(err))
            )


def fit(record: dict[str, Any]) -> dict[str, Any]:
    """The record within MAX_RECORD_BYTES: the oldest tries go first, then the result's details."""

    def size(r: Mapping[str, Any]) -> int:
        return len(json.dumps(r, separators=(",", ":")))

    if size(record) <= MAX_RECORD_BYTES:
        return record
    out = dict(record)
    tries = list(out.get("tries") or [])
    while len(tries) > 1 and size(out) > MAX_RECORD_BYTES:
        tries = tries[1:]
        out["tries"] = tries
    if size(out) > MAX_RECORD_BYTES:
        out["result"] = None
    if size(out) > MAX_RECORD_BYTES and isinstance(out.get("live"), dict):
        out["live"] = {**out["live"], "inflight": []}
    return out


def resumed_from(
    checkpoint: UploadCheckpoint | DownloadCheckpoint | IngestCheckpoint | None,
) -> dict[str, int | None]:
    """``start_try`` arguments from a loaded checkpoint: what it resumes, and the totals it knows."""
    if isinstance(checkpoint, UploadCheckpoint):
        return {
            "resumed_units": len(checkpoint.parts),
            "resumed_bytes": checkpoint.bytes_done,
            "units_total": checkpoint.part_count,
            "bytes_total": checkpoint.source.size,
        }
    if isinstance(checkpoint, DownloadCheckpoint):
        return {
            "resumed_units": len(checkpoint.done_chunks),
            "resumed_bytes": checkpoint.bytes_done,
            "units_total": checkpoint.chunk_count,
            "bytes_total": checkpoint.length,
        }
    if isinstance(checkpoint, IngestCheckpoint):  # bytes by source position arrive with the first event
        return {"resumed_units": checkpoint.batches_acked}
    return {}


def as_count(value: Any) -> int | None:
    """A rendered parallelism for display (None when it does not parse; the operator reports that)."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def recording(recorder: TransferRecorder) -> Iterator[TransferRecorder]:
    """End the try as failed with whatever escapes the block (errors, cancellation, task termination)."""
    try:
        yield recorder
    except BaseException as err:
        recorder.end_try(error=err)
        raise
