"""Backoff with jitter that honours Retry-After, decided by error type, within a bounded budget.

Each request retries on its own (``call_with_retry``); a ``RecoveryBudget`` shared by every request of
one transfer stops a sick endpoint from being hammered forever by thousands of parts.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from airflow_databricks_transfer.engine.errors import (
    RateLimitedError,
    RetryableError,
    RetryBudgetExceeded,
    TransferError,
)

T = TypeVar("T")


class Cancelled(TransferError):
    """The transfer was asked to stop (task killed, timeout, a sibling part failed fatally)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 300.0
    # 429s (the workspace's shared request limit) are retried without counting as attempts or against a
    # transfer's budget until one call has waited this long on them; 0 counts them like other errors.
    max_rate_limited_wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("delays must satisfy 0 <= base_delay_s <= max_delay_s")
        if self.max_rate_limited_wait_s < 0:
            raise ValueError("max_rate_limited_wait_s must be >= 0")

    def delay_s(self, attempt: int, err: RetryableError, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1)."""
        if err.retry_after_s is not None:
            return min(max(err.retry_after_s, 0.0), self.max_retry_after_s)
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)  # "equal jitter": spread out, never zero

    def rate_limited_delay_s(self, err: RetryableError, rng: random.Random) -> float:
        """Retry-After (or the base delay) plus half to one base delay of jitter, never zero: clients
        refused together must not all come back in the same instant and be refused together again."""
        wait = self.base_delay_s if err.retry_after_s is None else max(err.retry_after_s, 0.0)
        return (
            min(wait, self.max_retry_after_s) + rng.uniform(self.base_delay_s / 2, self.base_delay_s) + 0.001
        )


class RecoveryBudget:
    """Counts retries across all requests of one transfer; thread-safe."""

    def __init__(self, max_retries: int) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def spend(self, err: BaseException) -> None:
        with self._lock:
            self._used += 1
            if self._used > self.max_retries:
                raise RetryBudgetExceeded(
                    f"gave up after {self.max_retries} retries across the transfer; last error: {err}",
                    last_error=err,
                ) from err


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    budget: RecoveryBudget | None = None,
    cancel: threading.Event | None = None,
    on_retry: Callable[[int, RetryableError, float], None] | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] | None = None,
    pace: Callable[[], float] | None = None,
) -> T:
    """Run ``fn``; on RetryableError wait and run it again. Anything else propagates at once.

    ``pace`` runs after a failure and before ``on_retry`` hears the delay: it may block (a bandwidth
    limiter taking the tokens for the re-send) and returns the seconds it took, which count towards
    the delay, so the delay ``on_retry`` announces is the one that really follows.
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
    attempt = 1
    rate_limited_waited = 0.0
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("transfer cancelled")
        try:
            return fn()
        except RetryableError as err:
            delay: float | None = None
            if isinstance(err, RateLimitedError):  # pacing by a shared limit: bounded by time, not count
                wait = policy.rate_limited_delay_s(err, rng)
                if rate_limited_waited + wait <= policy.max_rate_limited_wait_s:
                    rate_limited_waited += wait
                    delay = wait
            counted = delay is None
            if delay is None:
                if attempt >= policy.max_attempts:
                    raise RetryBudgetExceeded(
                        f"gave up after {attempt} attempts: {err}", last_error=err
                    ) from err
                if budget is not None:
                    budget.spend(err)
                delay = policy.delay_s(attempt, err, rng)
            if pace is not None:
                delay = max(0.0, delay - pace())
                if cancel is not None and cancel.is_set():
                    raise Cancelled("transfer cancelled") from err
            if on_retry is not None:
                on_retry(attempt, err, delay)
            if sleep is not None:
                sleep(delay)
            elif cancel is not None:
                if cancel.wait(delay):
                    raise Cancelled("transfer cancelled") from err
            else:
                time.sleep(delay)
            if counted:
                attempt += 1
