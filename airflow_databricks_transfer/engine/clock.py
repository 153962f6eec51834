"""The server's clock, estimated from the ``Date`` headers of its answers (every backend stamps
Last-Modified and expires URLs on its own clock, which a worker's may be skewed against)."""

from __future__ import annotations

import email.utils
import threading
import time
from datetime import datetime, timezone


def http_date(value: str | None) -> float | None:
    """An HTTP-date header value as epoch seconds, or None when absent or malformed."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class ServerClock:
    """The workspace's clock, estimated from the ``Date`` headers of its answers.

    Presigned URLs expire on the server's clock and Last-Modified is stamped on it, so expire_time
    and the "written after this upload started" comparisons must use it, not the worker's clock
    (edge_cases.md item 7). A ``Date`` of second D, answering a request sent at local time s and
    received at r, bounds the skew (server minus local) to [D - r, D + 1 - s]. When 0 lies in that
    interval the local clock is as good as the header can tell and is used as is; otherwise the lower
    bound is used (at most about a second plus the round trip low): an early "since" can only make
    an upload's own file look like its own, and a provenance check also compares the prior version.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skew_s: float | None = None

    @property
    def known(self) -> bool:
        with self._lock:
            return self._skew_s is not None

    @property
    def skew_s(self) -> float:
        with self._lock:
            return self._skew_s or 0.0

    def observe(self, date: str | None, sent_at: float, received_at: float) -> None:
        server_s = http_date(date)
        if server_s is None:
            return
        low, high = server_s - received_at, server_s + 1 - sent_at
        with self._lock:
            self._skew_s = 0.0 if low <= 0 <= high else low

    def now(self) -> float:
        return time.time() + self.skew_s

    def expire_time(self, ttl_s: float) -> tuple[str, float]:
        """``expire_time`` for a URL living ``ttl_s`` on the server's clock, and its local expiry."""
        local = time.time()
        server = datetime.fromtimestamp(local + self.skew_s + ttl_s, tz=timezone.utc)
        return server.strftime("%Y-%m-%dT%H:%M:%SZ"), local + ttl_s
