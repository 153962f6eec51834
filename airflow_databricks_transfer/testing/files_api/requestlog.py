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
    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[LoggedRequest] = deque(maxlen=maxlen)
        self._seq = 0
        self.bytes_in_by_path: Counter[str] = Counter()
        self.bytes_in_by_part: Counter[tuple[str, int]] = Counter()
        self.bytes_out_by_path: Counter[str] = Counter()
        self.requests_by_route: Counter[str] = Counter()

    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
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

    def as_dicts(self, since: int = 0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entries(since)]
