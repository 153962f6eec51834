"""Small pure pieces of the upload path: announced delays, part-URL refresh without a global stall."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from airflow_databricks_transfer.engine.errors import ConnectionLostError, ThrottledError
from airflow_databricks_transfer.engine.ports import PresignedUrl
from airflow_databricks_transfer.engine.retry import RetryPolicy, call_with_retry
from airflow_databricks_transfer.engine.upload import UploadOptions, _PartUrls


def test_pacing_counts_towards_the_delay_and_the_announced_delay_is_the_slept_one() -> None:
    """A bandwidth limiter's wait comes before the retry line, so the line tells the real delay."""
    errors = [ThrottledError("slow down", retry_after_s=5.0), ConnectionLostError("reset")]

    def fn() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    announced: list[float] = []
    slept: list[float] = []
    paced = iter([3.0, 2.0])
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=1.0)
    result = call_with_retry(
        fn,
        policy,
        on_retry=lambda attempt, err, delay: announced.append(delay),
        sleep=slept.append,
        pace=lambda: next(paced),
        rng=random.Random(0),
    )
    assert result == "ok"
    assert announced == slept  # what is announced is what follows
    assert announced[0] == pytest.approx(2.0)  # Retry-After 5 s, 3 s of it spent waiting for the limiter
    assert announced[1] == 0.0  # the limiter took longer than the backoff: no extra sleep


class _Target:
    """part_urls of batch 2 blocks until released, as a control call sleeping in its backoff would."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def part_urls(self, token: str, first: int, count: int) -> Mapping[int, PresignedUrl]:
        with self.lock:
            self.calls.append((first, count))
        if first > 1:
            self.release.wait(30)
        return {n: PresignedUrl(f"http://x/{n}", (), float("inf")) for n in range(first, first + count)}


def test_a_slow_url_refresh_blocks_only_the_workers_that_need_it() -> None:
    target = _Target()
    urls = _PartUrls(
        target,  # type: ignore[arg-type]
        "token",
        UploadOptions(url_batch=4),
        12,
        lambda fn: fn(),
        threading.Event(),
    )
    assert urls.get(1).url == "http://x/1"  # batch 1-4 fetched
    results: dict[str, Any] = {}

    def fetch(name: str, n: int) -> None:
        results[name] = urls.get(n).url

    slow = threading.Thread(target=fetch, args=("slow", 5))  # batch 5-8: held on the server
    slow.start()
    while len(target.calls) < 2:
        threading.Event().wait(0.001)
    waiter = threading.Thread(target=fetch, args=("waiter", 6))  # needs the same batch: waits for it
    waiter.start()
    valid = threading.Thread(target=fetch, args=("valid", 3))  # has a valid URL: must not wait
    valid.start()
    valid.join(10)
    assert not valid.is_alive(), "a worker with a valid URL was blocked by another worker's refresh"
    assert results["valid"] == "http://x/3" and "waiter" not in results
    target.release.set()
    slow.join(10)
    waiter.join(10)
    assert results["slow"] == "http://x/5" and results["waiter"] == "http://x/6"
    assert target.calls == [(1, 4), (5, 4)]  # one fetch per batch, not one per waiting worker
