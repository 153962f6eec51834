"""The workspace's request limits: at most N requests in flight and M started in any one second.

Reference 7.2: the Files API backend allows about 10 concurrent requests and 100 requests per second
per workspace and answers 429 beyond that. A refused request is not counted (it never reached the
backend), so a client that backs off as told gets through.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable


class RequestLimiter:
    """Thread-safe admission control; every admitted request must be released once answered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # injectable so a test can pin the one-second window
        self._lock = threading.Lock()
        self._in_flight = 0
        self._started: collections.deque[float] = collections.deque()

    def admit(self, concurrent: int, per_s: int) -> str | None:
        """None when admitted, else which limit refused the request."""
        now = self._clock()
        with self._lock:
            while self._started and now - self._started[0] >= 1.0:
                self._started.popleft()
            if concurrent and self._in_flight >= concurrent:
                return f"more than {concurrent} concurrent requests"
            if per_s and len(self._started) >= per_s:
                return f"more than {per_s} requests per second"
            self._in_flight += 1
            self._started.append(now)
            return None

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight
