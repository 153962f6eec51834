"""Progress pieces in isolation: unit names, one speed formula, an empty-start limiter that reports waits."""

from __future__ import annotations

import pytest

from airflow_databricks_transfer.engine.progress import (
    BandwidthLimiter,
    ProgressTracker,
    throughput_mib_per_s,
)

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_the_unit_is_named_in_the_line() -> None:
    clock = Clock()
    tracker = ProgressTracker("download d", 4 * MiB, 2, clock=clock, unit="chunk")
    clock.t += 1
    tracker.add(3 * MiB)
    tracker.add(0, part_done=True)
    assert "chunk 1/2" in tracker.snapshot().describe()


def test_the_final_rate_counts_from_the_start_of_the_try() -> None:
    clock = Clock()
    started = clock.t
    clock.t += 2  # setup before the tracker exists (session, URLs) is part of the try
    tracker = ProgressTracker("upload u", 8 * MiB, clock=clock, started=started)
    clock.t += 2
    tracker.add(8 * MiB, part_done=True)
    final = tracker.finish()
    assert final.elapsed_s == 4
    assert final.rate_bps / MiB == throughput_mib_per_s(8 * MiB, 4) == 2.0


def test_the_limiter_starts_empty_and_counts_its_waits() -> None:
    clock = Clock()

    def sleep(s: float) -> None:
        clock.t += s

    limiter = BandwidthLimiter(MiB, clock=clock, sleep=sleep)
    start = clock.t
    for _ in range(8):
        limiter.acquire(256 * 1024)
    assert clock.t - start == pytest.approx(2.0)  # 2 MiB at 1 MiB/s, nothing for free
    assert limiter.waited_s == pytest.approx(2.0)
    tracker = ProgressTracker("upload l", 2 * MiB, clock=clock, limiter=limiter)
    assert tracker.finish().throttled_s == pytest.approx(2.0)
