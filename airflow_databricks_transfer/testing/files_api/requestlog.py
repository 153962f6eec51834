"""A bounded log of every request with byte counters, so tests can assert exactly what a client sent."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LoggedRequest:
    seq: int
    time: float
    method: str
    route: str
    path: str
    part_number: int | None
    status: int
    bytes_in: int
    bytes_out: int
    duration_s: float
    range: str | None = None
    fault: str | None = None
    dropped: bool = False


class RequestLog:
    def __init__(self, maxlen: int = 100_000, settle_timeout_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        # A client gets its answer before the handler records the request; readers wait for requests
        # in flight to be recorded so a test never misses the one it just made.
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self.settle_timeout_s = settle_timeout_s
        self._entries: deque[LoggedRequest] = deque(maxlen=maxlen)
        self._seq = 0
        self.bytes_in_by_path: Counter[str] = Counter()
        self.bytes_in_by_part: Counter[tuple[str, int]] = Counter()
        self.bytes_out_by_path: Counter[str] = Counter()
        self.requests_by_route: Counter[str] = Counter()

    def begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _settle(self) -> None:
        """Wait (bounded) until no request is between its response and its log entry. Holds the lock."""
        self._idle.wait_for(lambda: self._in_flight == 0, timeout=self.settle_timeout_s)

    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._idle.notify_all()
            self._seq += 1
            entry.seq = self._seq
            self._entries.append(entry)
            self.requests_by_route[entry.route] += 1
            if entry.path:
                self.bytes_in_by_path[entry.path] += entry.bytes_in
                self.bytes_out_by_path[entry.path] += entry.bytes_out
                if entry.part_number is not None:
                    self.bytes_in_by_part[(entry.path, entry.part_number)] += entry.bytes_in

    def entries(self, since: int = 0, route: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            self._settle()
            return [e for e in self._entries if e.seq > since and (route is None or e.route == route)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes_in_by_path.clear()
            self.bytes_in_by_part.clear()
            self.bytes_out_by_path.clear()
            self.requests_by_route.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._settle()
            parts: dict[str, dict[str, int]] = {}
            for (path, part), n in self.bytes_in_by_part.items():
                parts.setdefault(path, {})[str(part)] = n
            return {
                "requests": self._seq,
                "requests_by_route": dict(self.requests_by_route),
                "bytes_in_by_path": dict(self.bytes_in_by_path),
                "bytes_out_by_path": dict(self.bytes_out_by_path),
                "bytes_in_by_part": parts,
            }

    def bytes_by_part(self, path: str) -> dict[int, int]:
        with self._lock:
            self._settle()
            return {part: n for (p, part), n in self.bytes_in_by_part.items() if p == path}

    def as_dicts(self, since: int = 0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entries(since)]
