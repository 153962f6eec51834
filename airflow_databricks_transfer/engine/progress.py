"""Progress events (bytes, parts or chunks, rate, ETA) for subscribers, and an optional bandwidth limit.

Workers report every piece; subscribers hear at most one event per ``interval_s`` (plus the final one),
so a 10,000-part upload does not write 10,000 log lines. A subscriber with its own ``interval_s``
attribute (the UI recorder: ~2 s) is paced by that instead, independently of the log lines.

A subscriber with an ``attach`` method is handed the tracker, so it can ``peek`` at the state when the
try ends without a final event (a failure).

Units in flight: a worker calls ``begin(n)`` when it takes part/chunk ``n`` and the unit leaves the
in-flight set when it is done (``add(..., unit=n)``) or abandoned (``end(n)``); events carry the set as a
sorted tuple (at most ``parallelism`` entries), numbered as the caller numbers its units.

One speed: a transfer's rate is ``throughput_mib_per_s(bytes sent this try, seconds since the try
began)``. The final event and the driver's result both use it, with the same clock start and the same
end (the result takes its seconds from the final event), so the hook's line and the operator's agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

MiB = 1024 * 1024


def throughput_mib_per_s(nbytes: int, seconds: float) -> float:
    """The one definition of a transfer's speed: bytes moved in this try over its wall time."""
    return (nbytes / MiB) / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class ProgressEvent:
    label: str
    bytes_done: int
    bytes_total: int
    parts_done: int
    parts_total: int
    bytes_resumed: int  # already there from an earlier try, not sent in this one
    elapsed_s: float
    rate_bps: float  # recent throughput of this try
    eta_s: float | None
    final: bool = False
    unit: str = "part"  # what parts_done counts: "part" for uploads, "chunk" for downloads
    throttled_s: float = 0.0  # time spent waiting for the bandwidth limit so far
    inflight: tuple[int, ...] = ()  # units workers hold right now (sorted; numbering: the caller's)
    parts_resumed: int = 0  # units an earlier try finished (counted in parts_done)

    @property
    def bytes_sent(self) -> int:
        """Bytes moved in this try (not the resumed ones)."""
        return self.bytes_done - self.bytes_resumed

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0

    def describe(self) -> str:
        eta = "--" if self.eta_s is None else _duration(self.eta_s)
        parts = f", {self.unit} {self.parts_done}/{self.parts_total}" if self.parts_total > 1 else ""
        done, total = _size(self.bytes_done), _size(self.bytes_total)
        return (
            f"{self.label}: {self.percent:5.1f}% ({done} of {total}{parts}) "
            f"{self.rate_bps / MiB:.1f} MiB/s, ETA {eta}"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _duration(s: float) -> str:
    s = int(s + 0.5)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


Subscriber = Callable[[ProgressEvent], None]


def _own_interval(subscriber: Subscriber) -> float | None:
    """A subscriber's own pacing (an ``interval_s`` attribute), or None for the tracker's."""
    interval = getattr(subscriber, "interval_s", None)
    return float(interval) if isinstance(interval, (int, float)) else None


class ProgressTracker:
    """Thread-safe counter that turns worker reports into throttled progress events."""

    def __init__(
        self,
        label: str,
        bytes_total: int,
        parts_total: int = 1,
        *,
        subscribers: list[Subscriber] | None = None,
        interval_s: float = 10.0,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "part",
        started: float | None = None,
        limiter: BandwidthLimiter | None = None,
    ) -> None:
        """``started``: when the try began (its clock), so setup time counts in the rate like in the
        driver's result; ``limiter``: its waiting time is reported, not hidden."""
        self.label = label
        self.unit = unit
        self.limiter = limiter
        self.bytes_total = bytes_total
        self.parts_total = parts_total
        self.subscribers = list(subscribers or [])
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock() if started is None else started
        # when each subscriber last heard; one with its own interval hears the first report at once
        self._last_emit = [
            float("-inf") if _own_interval(s) is not None else self._start for s in self.subscribers
        ]
        self._done = 0
        self._resumed = 0
        self._parts = 0
        self._parts_resumed = 0
        self._inflight: set[int] = set()
        for subscriber in self.subscribers:  # one that closes its record at the end asks for a snapshot
            attach = getattr(subscriber, "attach", None)
            if callable(attach):
                attach(self)
        self._samples: deque[tuple[float, int]] = deque([(self._start, 0)])

    def resumed(self, nbytes: int, parts: int = 0) -> None:
        """Count work an earlier try already finished (it does not enter the rate)."""
        with self._lock:
            self._resumed += nbytes
            self._done += nbytes
            self._parts += parts
            self._parts_resumed += parts

    def begin(self, unit: int) -> None:
        """A worker took unit ``unit``: it is in flight until done (``add(..., unit=)``) or ``end``."""
        with self._lock:
            self._inflight.add(unit)
            due = self._due(self._clock())
        self._publish_to(due)

    def end(self, unit: int) -> None:
        """Unit ``unit`` left the workers without finishing (failure, cancel); a no-op once done."""
        with self._lock:
            self._inflight.discard(unit)

    def add(self, nbytes: int, *, part_done: bool = False, unit: int | None = None) -> None:
        """Count ``nbytes`` moved; ``part_done`` one more unit finished (``unit``: which, leaving flight)."""
        with self._lock:
            self._done += nbytes
            if part_done:
                self._parts += 1
                if unit is not None:
                    self._inflight.discard(unit)
            now = self._clock()
            self._samples.append((now, self._done - self._resumed))
            while len(self._samples) > 2 and self._samples[1][0] < now - self.window_s:
                self._samples.popleft()
            due = self._due(now)
        self._publish_to(due)

    def undo(self, nbytes: int, unit: int | None = None) -> None:
        """Take back bytes of a part that failed mid-way and will be sent again."""
        with self._lock:
            self._done -= nbytes
            if unit is not None:
                self._inflight.discard(unit)

    def _due(self, now: float) -> tuple[ProgressEvent | None, list[Subscriber]]:
        """The subscribers whose interval has passed, and the event for them (under the lock)."""
        due = []
        while len(self._last_emit) < len(self.subscribers):  # subscribed after construction
            self._last_emit.append(self._start)
        for i, subscriber in enumerate(self.subscribers):
            interval = _own_interval(subscriber)
            if now - self._last_emit[i] >= (self.interval_s if interval is None else interval):
                self._last_emit[i] = now
                due.append(subscriber)
        return (self._event(now, final=False) if due else None), due

    @staticmethod
    def _publish_to(due: tuple[ProgressEvent | None, list[Subscriber]]) -> None:
        event, subscribers = due
        if event is not None:
            for subscriber in subscribers:
                subscriber(event)

    def finish(self) -> ProgressEvent:
        with self._lock:
            event = self._event(self._clock(), final=True)
        self._publish(event)
        return event

    def snapshot(self) -> ProgressEvent:
        with self._lock:
            return self._event(self._clock(), final=False)

    def peek(self, wait_s: float = 1.0) -> ProgressEvent | None:
        """A snapshot, or None if the lock stays taken ``wait_s`` (a signal handler must not hang)."""
        if not self._lock.acquire(timeout=wait_s):
            return None
        try:
            return self._event(self._clock(), final=False)
        finally:
            self._lock.release()

    def _event(self, now: float, final: bool) -> ProgressEvent:
        elapsed = now - self._start
        t0, b0 = self._samples[0]
        sent = self._done - self._resumed
        span = now - t0
        rate = (sent - b0) / span if span > 0 else 0.0
        if final:
            rate = throughput_mib_per_s(sent, elapsed) * MiB
        remaining = max(0, self.bytes_total - self._done)
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        return ProgressEvent(
            self.label,
            self._done,
            self.bytes_total,
            self._parts,
            self.parts_total,
            self._resumed,
            elapsed,
            rate,
            eta,
            final,
            self.unit,
            self.limiter.waited_s if self.limiter is not None else 0.0,
            tuple(sorted(self._inflight)) if not final else (),
            self._parts_resumed,
        )

    def _publish(self, event: ProgressEvent) -> None:
        for subscriber in self.subscribers:
            subscriber(event)


class InfoLogger(Protocol):
    """Anything with ``info(msg, *args)``: a stdlib logger or Airflow's structured task logger."""

    def info(self, msg: str, /, *args: Any) -> Any: ...


def log_progress(logger: InfoLogger | logging.Logger) -> Subscriber:
    """A subscriber that writes one line per event at INFO."""

    def emit(event: ProgressEvent) -> None:
        if event.final:
            throttled = (
                f", workers held {event.throttled_s:.1f} s in all by the bandwidth limit"
                if event.throttled_s
                else ""
            )
            logger.info(
                "%s: done, %s in %.1f s (%.1f MiB/s this try, %s resumed%s)",
                event.label,
                _size(event.bytes_done),
                event.elapsed_s,
                event.rate_bps / MiB,
                _size(event.bytes_resumed),
                throttled,
            )
        else:
            logger.info("%s", event.describe())

    return emit


class BandwidthLimiter:
    """A token bucket shared by all workers of a transfer; ``acquire`` blocks until bytes may go.

    The bucket starts empty and holds little (a quarter second of the rate, at least one 256 KiB
    piece), and callers acquire per piece as it is sent, so the measured rate stays at the limit even
    over a short transfer, instead of a whole part going out at full speed before the limit bites.
    """

    def __init__(
        self,
        bytes_per_s: float,
        burst_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("bandwidth limit must be positive")
        self.rate = bytes_per_s
        self.burst = burst_bytes if burst_bytes is not None else max(int(bytes_per_s / 4), 256 * 1024)
        self._tokens = 0.0
        self._waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, nbytes: int, stop: threading.Event | None = None) -> None:
        """Block until ``nbytes`` may go; returns early (without the tokens) once ``stop`` is set."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= min(nbytes, self.burst):
                    self._tokens -= nbytes  # may go negative: large chunks borrow from the future
                    return
                wait = (min(nbytes, self.burst) - self._tokens) / self.rate
                self._waited += wait
            if stop is not None:
                if stop.wait(wait):
                    return
            else:
                self._sleep(wait)

    @property
    def waited_s(self) -> float:
        """Seconds callers have spent blocked in ``acquire`` (summed over workers)."""
        with self._lock:
            return self._waited
