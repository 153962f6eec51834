"""Progress events are throttled, carry rate and ETA, and separate resumed work from this try's."""

from __future__ import annotations

import logging

import pytest

from airflow_databricks_transfer.engine.progress import (
    BandwidthLimiter,
    ProgressEvent,
    ProgressTracker,
    log_progress,
)

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_events_are_throttled_and_report_rate_and_eta() -> None:
    clock = Clock()
    events: list[ProgressEvent] = []
    tracker = ProgressTracker(
        "upload x", 100 * MiB, 100, subscribers=[events.append], interval_s=5, clock=clock
    )
    for _ in range(40):  # 40 parts of 1 MiB, one every 0.5 s -> 2 MiB/s
        clock.t += 0.5
        tracker.add(MiB, part_done=True)
    assert len(events) == 4  # one per 5 s, not one per part
    last = events[-1]
    assert last.bytes_done == 40 * MiB and last.parts_done == 40
    assert last.rate_bps == pytest.approx(2 * MiB, rel=0.01)
    assert last.eta_s == pytest.approx(30, rel=0.01)
    assert "40.0%" in last.describe() and "MiB/s" in last.describe() and "ETA 30s" in last.describe()


def test_resumed_bytes_count_toward_done_but_not_rate() -> None:
    clock = Clock()
    tracker = ProgressTracker("download y", 10 * MiB, clock=clock)
    tracker.resumed(6 * MiB, parts=6)
    clock.t += 1
    tracker.add(MiB)
    final = tracker.finish()
    assert final.final and final.bytes_done == 7 * MiB and final.bytes_resumed == 6 * MiB
    assert final.rate_bps == pytest.approx(MiB)


def test_log_subscriber_writes_readable_lines(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("adt.test")
    clock = Clock()
    tracker = ProgressTracker(
        "upload z", 4 * MiB, 4, subscribers=[log_progress(logger)], interval_s=0, clock=clock
    )
    with caplog.at_level(logging.INFO, logger="adt.test"):
        clock.t += 1
        tracker.add(2 * MiB, part_done=True)
        clock.t += 1
        tracker.add(2 * MiB, part_done=True)
        tracker.finish()
    assert "upload z:  50.0% (2.00 MiB of 4.00 MiB, part 1/4)" in caplog.text
    assert "upload z: done, 4.00 MiB in 2.0 s" in caplog.text


def test_bandwidth_limiter_paces_bytes() -> None:
    clock = Clock()
    waited: list[float] = []

    def sleep(s: float) -> None:
        waited.append(s)
        clock.t += s

    limiter = BandwidthLimiter(MiB, burst_bytes=MiB, clock=clock, sleep=sleep)
    start = clock.t
    for _ in range(5):
        limiter.acquire(MiB)
    # the bucket starts empty: 5 MiB at 1 MiB/s take 5 s, no free first burst
    assert clock.t - start == pytest.approx(5, rel=0.01)
    with pytest.raises(ValueError):
        BandwidthLimiter(0)
