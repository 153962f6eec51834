"""What the Transfer tab shows, built from stored values: pure functions, no Airflow import.

The plugin app (:mod:`airflow_databricks_transfer.plugins.transfer_ui`) reads rows from the metadata
database and hands them here; everything that decides what the user sees lives in this module so it can
be tested without a server.

Unit map encoding (``payload["map"]``), compact for 10,000+ units:

- ``"bitmap"``: ``done`` is base64 of a bitmap, bit ``i`` (LSB first within each byte, as the checkpoints
  pack theirs) is unit number ``first + i``; ``first`` is 1 for parts/blocks (1-based part numbers, as in
  upload checkpoints) and 0 for download chunks (0-based chunk indexes, as in
  ``DownloadCheckpoint.done_chunks``). ``inflight`` lists unit numbers in the same base.
- ``"counts"``: units without a stable identity (sync files, ingest batches), too many units for a
  bitmap, or no checkpoint to read while the record or XCom counts some units done (before the first
  checkpoint write, or with a worker-side state store backend): only ``done_count``, ``inflight_count``
  and ``count``.

Nothing credential-like leaves this module: the checkpoint head's ``session_token`` is never copied,
and :func:`scrub` removes URL query strings, SAS-like parameters and secret-named keys from the payload.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

UI_SCHEMA = "airflow-databricks-transfer/ui"
CHECKPOINT_SCHEMA = "airflow-databricks-transfer/checkpoint"
API_SCHEMA = "airflow-databricks-transfer/ui-api"
UI_SUFFIX = ".ui"

UPLOAD_KINDS = frozenset(
    {"files_api.upload", "azure_blob.upload", "azure_blob.to_volume", "volume.to_azure_blob"}
)
DOWNLOAD_KINDS = frozenset({"files_api.download", "azure_blob.download"})
# Airflow task-instance states in which a try may still be (or become) active: the page keeps polling
ACTIVE_STATES = frozenset(
    {"running", "queued", "scheduled", "up_for_retry", "up_for_reschedule", "deferred", "restarting"}
)
RUNNING_STATES = frozenset({"running", "deferred", "restarting", "up_for_reschedule"})
MAX_BITMAP_UNITS = 200_000  # 25 KB of bitmap; beyond that the map shows counts
ERROR_CHARS = 500
TAB_ROUTE = "transfer"  # the task instance tab's ``url_route`` (plugins/__init__.py)

_URL_QUERY = re.compile(r"(https?://[^\s\"'?<>]+)\?[^\s\"'<>]*")
_SIGNED_PARAM = re.compile(
    r"(?i)\b(sig|sv|se|st|sp|sr|spr|skoid|sktid|skt|ske|sks|skv|x-amz-[a-z-]+|x-goog-[a-z-]+|"
    r"signature|access_token|token|code|key)=[^&\s\"'<>]+"
)
_SECRET_KEY = re.compile(r"(?i)(token|secret|password|passwd|sas|signature|credential|authorization|cookie)")


def tab_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Transfer tab of a task instance, relative to the Airflow UI's base URL."""
    path = f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    if map_index >= 0:
        path += f"/mapped/{map_index}"
    return f"{path}/plugin/{TAB_ROUTE}"


# ------------------------------------------------------------------------------------------ scrubbing
def scrub_text(text: str) -> str:
    """A display string without URL query strings or signed-URL parameters."""
    return _SIGNED_PARAM.sub(r"\1=<redacted>", _URL_QUERY.sub(r"\1?<redacted>", text))


def scrub(value: Any) -> Any:
    """``value`` with every string scrubbed and every secret-named mapping key dropped (defence in
    depth: the producers already store no credential)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ the map
def _b64decode(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _set_bits(bits: bytearray, src: bytes, offset: int, count: int) -> None:
    """OR ``count`` bits of ``src`` into ``bits`` starting at bit ``offset``."""
    if offset % 8 == 0:  # segments of 1,000 parts start on a byte boundary: copy bytes
        start, nbytes = offset // 8, (count + 7) // 8
        chunk = src[:nbytes]
        if count % 8:
            chunk = chunk[:-1] + bytes([chunk[-1] & ((1 << (count % 8)) - 1)]) if chunk else chunk
        for i, b in enumerate(chunk):
            if start + i < len(bits):
                bits[start + i] |= b
        return
    for i in range(min(count, len(src) * 8)):
        if src[i // 8] >> (i % 8) & 1:
            j = offset + i
            if j // 8 < len(bits):
                bits[j // 8] |= 1 << (j % 8)


def _popcount(bits: bytes | bytearray) -> int:
    return int.from_bytes(bits, "little").bit_count()


def _prefix_bits(count: int, total: int) -> bytearray:
    """A bitmap of ``total`` units whose first ``count`` are set."""
    bits = bytearray((total + 7) // 8)
    full, rest = divmod(min(count, total), 8)
    bits[:full] = b"\xff" * full
    if rest:
        bits[full] = (1 << rest) - 1
    return bits


def checkpoint_done_bits(
    head: Mapping[str, Any] | None, segments: Sequence[Mapping[str, Any] | None]
) -> tuple[bytearray, int, int] | None:
    """(bitmap, first unit number, unit count) of the done units a checkpoint records, or None.

    Uploads: the head plus its segment values (1-based part numbers); a resumable-protocol upload
    counts its confirmed bytes as whole parts. Downloads: the one value's ``done`` (0-based chunks).
    """
    if not isinstance(head, Mapping) or head.get("schema") != CHECKPOINT_SCHEMA:
        return None
    kind = head.get("kind")
    try:
        if kind in UPLOAD_KINDS:
            total = int(head["part_count"])
            if total <= 0:
                return None
            if head.get("protocol") == "resumable":
                part_size = int(head["part_size"])
                done = int(head.get("confirmed_bytes", 0)) // part_size if part_size > 0 else 0
                return _prefix_bits(done, total), 1, total
            bits = bytearray((total + 7) // 8)
            for seg in segments:
                if not isinstance(seg, Mapping):
                    continue
                first, count = int(seg["first"]), int(seg["count"])
                raw = _b64decode(seg.get("done"))
                if raw is not None and 1 <= first <= total:
                    _set_bits(bits, raw, first - 1, min(count, total - first + 1))
            return bits, 1, total
        if kind in DOWNLOAD_KINDS:
            length, chunk = int(head["length"]), int(head["chunk_size"])
            if chunk <= 0 or length < 0:
                return None
            total = max(1, (length + chunk - 1) // chunk) if length else 0
            bits = bytearray((total + 7) // 8)
            raw = _b64decode(head.get("done"))
            if raw is not None:
                _set_bits(bits, raw, 0, total)
            return bits, 0, total
    except (KeyError, TypeError, ValueError):
        return None
    return None


def checkpoint_bytes(head: Mapping[str, Any] | None, done_units: int, last_done: bool) -> tuple[int, int]:
    """(bytes done, bytes total) a checkpoint accounts for, from its unit sizes."""
    if not isinstance(head, Mapping):
        return 0, 0
    try:
        kind = head.get("kind")
        if kind in UPLOAD_KINDS:
            size, unit, count = int(head["source"]["size"]), int(head["part_size"]), int(head["part_count"])
            if head.get("protocol") == "resumable":
                return int(head.get("confirmed_bytes", 0)), size
        elif kind in DOWNLOAD_KINDS:
            size, unit = int(head["length"]), int(head["chunk_size"])
            count = max(1, (size + unit - 1) // unit) if size else 0
        else:
            return 0, 0
    except (KeyError, TypeError, ValueError):
        return 0, 0
    if count <= 0:
        return 0, size
    tail = size - (count - 1) * unit
    done = done_units * unit - ((unit - tail) if last_done else 0)
    return max(0, min(done, size)), size


def first_unit(kind: str | None) -> int:
    """The number of a transfer's first unit: 0 for download chunks, 1 for parts and blocks."""
    return 0 if kind in DOWNLOAD_KINDS else 1


def unit_of(kind: str | None) -> str:
    if kind in DOWNLOAD_KINDS:
        return "chunk"
    if kind in ("azure_blob.upload", "volume.to_azure_blob"):
        return "block"
    if kind == "volume_sync":
        return "file"
    if kind == "zerobus.ingest":
        return "batch"
    return "part"


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]


def build_map(
    *,
    kind: str | None,
    unit: str,
    units_total: int | None,
    done_bits: tuple[bytearray, int, int] | None,
    live: Mapping[str, Any] | None,
    finished: bool,
    known_done: int | None = None,
) -> dict[str, Any]:
    """The unit map: a bitmap when units have numbers and the checkpoint says which are done, else
    counts (see the module docstring). ``known_done``: units done as the record or XCom count them,
    for when there is no checkpoint to read (not written yet, or kept outside the metadata database)."""
    live = live or {}
    inflight = _int_list(live.get("inflight"))
    inflight_count = live.get("inflight_count")
    if not isinstance(inflight_count, int):
        inflight_count = len(inflight)
    if finished:
        inflight, inflight_count = [], 0
    if done_bits is not None:
        bits: bytearray | None = done_bits[0]
        first, count = done_bits[1], done_bits[2]
    else:
        bits, first, count = None, first_unit(kind), int(units_total or 0)
    numbered = unit in ("part", "chunk", "block") and 0 < count <= MAX_BITMAP_UNITS
    if not numbered or (bits is None and not finished and known_done):
        if finished:
            done_count = count
        elif bits is not None:
            done_count = _popcount(bits)
        else:
            done_count = known_done or 0
        return {
            "encoding": "counts",
            "first": first,
            "count": count,
            "done_count": min(done_count, count) if count else done_count,
            "inflight_count": inflight_count,
        }
    if finished:
        bits = _prefix_bits(count, count)
    elif bits is None:  # nothing is known to be done yet
        bits = bytearray((count + 7) // 8)
    inflight = [n for n in inflight if first <= n < first + count]
    return {
        "encoding": "bitmap",
        "first": first,
        "count": count,
        "done": base64.b64encode(bytes(bits)).decode("ascii"),
        "done_count": _popcount(bits),
        "inflight": inflight,
        "inflight_count": max(inflight_count, len(inflight)),
    }


# ------------------------------------------------------------------------------------------ tries
def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _outcome(airflow_state: str | None) -> str:
    """A try's state as the tab words it, from the Airflow state of the instance that ran it."""
    if airflow_state in ("failed", "up_for_retry", "upstream_failed"):
        return "failed"
    if airflow_state == "success":
        return "success"
    if airflow_state in RUNNING_STATES:
        return "running"
    return airflow_state or "unknown"


def merge_tries(
    recorded: Sequence[Mapping[str, Any]],
    ti: Mapping[str, Any],
    history: Mapping[int, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The recorded tries, with what Airflow knows filled in.

    ``ti`` and each ``history[try_number]`` hold ``state``, ``start_date``, ``end_date`` (epoch seconds
    or None). A recorded try still "running" while the task instance is no longer running that try
    could not close its entry (SIGKILL, lost worker): it is shown with Airflow's state and end date,
    marked ``closed_by: "airflow"``. Tries Airflow ran that left no record (they failed before the
    transfer started) are added from the history, marked ``recorded: false``.
    """
    current = ti.get("try_number")
    ti_state = ti.get("state")

    def airflow_view(n: int) -> Mapping[str, Any] | None:
        if n == current:
            return ti
        return history.get(n)

    rows: dict[int, dict[str, Any]] = {}
    for entry in recorded:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("try_number"), int):
            continue
        n = int(entry["try_number"])
        row = {k: entry.get(k) for k in _TRY_FIELDS}
        row["try_number"], row["recorded"] = n, True
        still_running = n == current and ti_state in RUNNING_STATES
        if row.get("ended_at") is None and row.get("state") in (None, "running") and not still_running:
            seen = airflow_view(n)
            if seen is not None and seen.get("state") not in RUNNING_STATES:
                row["state"] = _outcome(seen.get("state"))
                row["ended_at"] = _num(seen.get("end_date"))
                row["closed_by"] = "airflow"
                if row["state"] == "failed" and not row.get("error"):
                    row["error"] = "the task process ended without closing its try (killed or lost)"
        error = row.get("error")
        if isinstance(error, str):
            row["error"] = error[:ERROR_CHARS]
        rows[n] = row
    for n, seen in [*history.items(), *([(current, ti)] if isinstance(current, int) else [])]:
        if n in rows or not isinstance(n, int) or n < 1:
            continue
        if seen.get("state") is None and seen.get("start_date") is None:
            continue  # scheduled, not started
        rows[n] = {
            **dict.fromkeys(_TRY_FIELDS),
            "try_number": n,
            "recorded": False,
            "state": _outcome(seen.get("state")),
            "started_at": _num(seen.get("start_date")),
            "ended_at": _num(seen.get("end_date")),
        }
    return [rows[n] for n in sorted(rows)]


_TRY_FIELDS = (
    "try_number",
    "started_at",
    "ended_at",
    "state",
    "resumed_units",
    "resumed_bytes",
    "sent_units",
    "sent_bytes",
    "discarded",
    "error",
)


# ------------------------------------------------------------------------------------------ payload
def _units_total_from(result: Mapping[str, Any] | None, unit: str) -> int | None:
    if not isinstance(result, Mapping):
        return None
    for key in (f"{unit}s", "parts", "chunks", "blocks", "batches", "uploaded"):
        if isinstance(result.get(key), int):
            return int(result[key])
    return None


def build_payload(
    *,
    ti: Mapping[str, Any],
    history: Mapping[int, Mapping[str, Any]],
    record: Mapping[str, Any] | None,
    checkpoint_head: Mapping[str, Any] | None,
    checkpoint_segments: Sequence[Mapping[str, Any] | None],
    xcom: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The JSON of ``GET .../api/transfer`` for one task instance (already scrubbed).

    ``record`` is the ``.ui`` value (None when deleted after success or never written); ``xcom`` the
    ``checkpoint`` XCom (the progress mirror while running, the final summary with ``phase: "done"``
    after success).
    """
    ti_state = ti.get("state")
    if record is not None and record.get("schema") != UI_SCHEMA:
        record = None
    final = xcom if isinstance(xcom, Mapping) and xcom.get("phase") == "done" else None
    # the record wins while it exists; after success the final XCom carries the same fields
    base: Mapping[str, Any] = record or final or (xcom if isinstance(xcom, Mapping) else None) or {}
    head = checkpoint_head if isinstance(checkpoint_head, Mapping) else None
    kind = base.get("kind") or (head or {}).get("kind")
    unit = str(base.get("unit") or unit_of(kind))
    result = base.get("result") if isinstance(base.get("result"), Mapping) else None
    finished = ti_state == "success" or final is not None or (record is not None and result is not None)

    done_bits = checkpoint_done_bits(head, checkpoint_segments) if not finished else None
    units_total = base.get("units_total")
    if not isinstance(units_total, int):
        units_total = done_bits[2] if done_bits else _units_total_from(result, unit)
    if not isinstance(units_total, int):
        for key in ("part_count", "chunk_count"):
            if isinstance(base.get(key), int):
                units_total = int(base[key])
    live = record.get("live") if record is not None and isinstance(record.get("live"), Mapping) else None
    live_current = live is not None and live.get("try_number") == ti.get("try_number")
    mirror = xcom if isinstance(xcom, Mapping) and final is None else None
    known_done = None
    if live_current and live is not None and isinstance(live.get("units_done"), int):
        known_done = int(live["units_done"])
    elif mirror is not None:
        counted = mirror.get("parts_done", mirror.get("chunks_done", mirror.get("batches_acked")))
        known_done = counted if isinstance(counted, int) else None
    unit_map = build_map(
        kind=kind,
        unit=unit,
        units_total=units_total,
        done_bits=done_bits,
        live=live if live_current and ti_state in RUNNING_STATES else None,
        finished=finished,
        known_done=known_done,
    )

    cp_done, cp_total = 0, 0
    if done_bits is not None:
        bits, _first, count = done_bits
        last_done = count > 0 and bool(bits[(count - 1) // 8] >> ((count - 1) % 8) & 1)
        cp_done, cp_total = checkpoint_bytes(head, _popcount(bits), last_done)
    bytes_total = base.get("bytes_total") if isinstance(base.get("bytes_total"), int) else cp_total or None
    if bytes_total is None and isinstance(result, Mapping) and isinstance(result.get("bytes"), int):
        bytes_total = result["bytes"]
    if finished:
        bytes_done: int | None = bytes_total
    else:  # the furthest of what is known about the current try; all of it only moves forward
        known = [cp_done] if done_bits is not None else []
        if live_current and live is not None and isinstance(live.get("bytes_done"), int):
            known.append(int(live["bytes_done"]))
        if mirror is not None and isinstance(mirror.get("bytes_done"), int):
            known.append(int(mirror["bytes_done"]))
        bytes_done = max(known) if known else None

    running = ti_state in RUNNING_STATES
    rate = _num(live.get("rate_bps")) if live_current and running and live else None
    eta = _num(live.get("eta_s")) if live_current and running and live else None
    tries_in: list[Any] = base["tries"] if isinstance(base.get("tries"), list) else []
    tries = merge_tries(tries_in, ti, history)
    last_error = next((t["error"] for t in reversed(tries) if t.get("error")), None)
    updated_at = _num(live.get("updated_at")) if live else None

    payload: dict[str, Any] = {
        "schema": API_SCHEMA,
        "version": 1,
        "ti": dict(ti),
        "found": bool(base) or head is not None,
        "from": "record" if record else "xcom" if base else "checkpoint" if head else None,
        "kind": kind,
        "source": base.get("source") if base.get("source") is not None else _head_source(head),
        "destination": base.get("destination") or base.get("table") or (head or {}).get("destination"),
        "unit": unit,
        "parallelism": base.get("parallelism"),
        "phase": "done" if finished else (live.get("phase") if live_current and live else base.get("phase")),
        "units_total": units_total,
        "bytes_total": bytes_total,
        "bytes_done": bytes_done,
        "rate_bps": rate,
        "eta_s": eta,
        "updated_at": updated_at,
        "age_s": round(now - updated_at, 1) if updated_at is not None and running else None,
        "map": unit_map,
        "tries": tries,
        "result": result,
        "last_error": last_error[:ERROR_CHARS] if isinstance(last_error, str) else None,
        "poll": ti_state in ACTIVE_STATES,
    }
    return scrub(payload)  # type: ignore[no-any-return]


def _head_source(head: Mapping[str, Any] | None) -> str | None:
    if head is None:
        return None
    src = head.get("source")
    if isinstance(src, Mapping):
        return str(src.get("path") or src.get("uri") or "") or None
    return str(src) if src is not None else None


def progress_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields the Transfers list shows per task instance."""
    done, total = payload.get("bytes_done"), payload.get("bytes_total")
    unit_map = payload.get("map") or {}
    percent = None
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        percent = round(100.0 * done / total, 1)
    elif unit_map.get("count"):
        percent = round(100.0 * unit_map.get("done_count", 0) / unit_map["count"], 1)
    return {
        "kind": payload.get("kind"),
        "source": payload.get("source"),
        "destination": payload.get("destination"),
        "unit": payload.get("unit"),
        "units_done": unit_map.get("done_count"),
        "units_total": unit_map.get("count"),
        "bytes_done": done,
        "bytes_total": total,
        "percent": percent,
        "rate_bps": payload.get("rate_bps"),
        "eta_s": payload.get("eta_s"),
        "tries": len(payload.get("tries") or []),
        "last_error": payload.get("last_error"),
    }
