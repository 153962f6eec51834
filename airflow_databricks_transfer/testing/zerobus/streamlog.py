"""What the emulator saw: one entry per stream, one per ingest request, and counters, for assertions.

Never holds a token or secret: streams are logged by table, client and outcome only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StreamEntry:
    seq: int
    stream_id: str
    table: str
    record_type: str
    peer: str
    user_agent: str
    opened: float = field(default_factory=time.time)
    closed: float | None = None
    # "open", "OK", or the gRPC status name the stream ended with ("DROPPED" for a reset connection)
    status: str = "open"
    detail: str = ""
    requests: int = 0
    records: int = 0
    bytes_in: int = 0
    # highest wire offset acknowledged to the client (-1: none)
    acked_up_to: int = -1
    records_acked: int = 0
    records_committed: int = 0
    faults: list[str] = field(default_factory=list)


@dataclass
class IngestEntry:
    seq: int
    time: float
    stream_seq: int
    table: str
    offset_id: int
    records: int
    bytes_in: int
    batch: bool
    outcome: str = "queued"  # queued -> acked | committed-unacked | refused | lost
    fault: str | None = None


class StreamLog:
    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._streams: deque[StreamEntry] = deque(maxlen=maxlen)
        self._ingests: deque[IngestEntry] = deque(maxlen=maxlen)
        self._stream_seq = 0
        self._ingest_seq = 0
        self.counters: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def open_stream(self, **kwargs: Any) -> StreamEntry:
        with self._lock:
            self._stream_seq += 1
            entry = StreamEntry(seq=self._stream_seq, **kwargs)
            self._streams.append(entry)
            self.counters["streams_opened"] += 1
            return entry

    def ingest(
        self, stream: StreamEntry, offset_id: int, records: int, nbytes: int, batch: bool
    ) -> IngestEntry:
        with self._lock:
            self._ingest_seq += 1
            entry = IngestEntry(
                self._ingest_seq, time.time(), stream.seq, stream.table, offset_id, records, nbytes, batch
            )
            self._ingests.append(entry)
            stream.requests += 1
            stream.records += records
            stream.bytes_in += nbytes
            self.counters["requests"] += 1
            self.counters["records_received"] += records
            self.counters["bytes_in"] += nbytes
            return entry

    def update(self, fn: Any, *args: Any) -> None:
        """Apply ``fn(*args)`` under the log's lock (entries are shared with the stream threads)."""
        with self._lock:
            fn(*args)

    def streams(self, table: str | None = None) -> list[StreamEntry]:
        with self._lock:
            return [s for s in self._streams if table is None or s.table == table]

    def ingests(self, table: str | None = None, since: int = 0) -> list[IngestEntry]:
        with self._lock:
            return [e for e in self._ingests if e.seq > since and (table is None or e.table == table)]

    def clear(self) -> None:
        with self._lock:
            self._streams.clear()
            self._ingests.clear()
            self.counters.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_status = Counter(s.status for s in self._streams)
            return {**{k: v for k, v in self.counters.items()}, "streams_by_status": dict(by_status)}

    def as_dicts(self, since: int = 0) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {
                "streams": [asdict(s) for s in self._streams],
                "ingests": [asdict(e) for e in self._ingests if e.seq > since],
            }
