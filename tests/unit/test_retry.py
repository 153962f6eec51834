"""Retry decisions: by error type, Retry-After honoured, jittered backoff, bounded budgets, cancellable."""

from __future__ import annotations

import random
import threading

import pytest

from airflow_databricks_transfer.engine.errors import (
    AuthError,
    ConnectionLostError,
    RateLimitedError,
    RetryBudgetExceeded,
    ThrottledError,
    UrlExpiredError,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RecoveryBudget, RetryPolicy, call_with_retry


class Flaky:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_errors_are_retried_with_backoff() -> None:
    waits: list[float] = []
    fn = Flaky([ConnectionLostError("reset"), ConnectionLostError("reset"), ConnectionLostError("reset")])
    policy = RetryPolicy(base_delay_s=1, max_delay_s=3)
    assert call_with_retry(fn, policy, sleep=waits.append, rng=random.Random(1)) == "done"
    assert fn.calls == 4
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 1.5 <= waits[2] <= 3  # doubling, capped


def test_retry_after_is_honoured_and_capped() -> None:
    waits: list[float] = []
    fn = Flaky([ThrottledError("slow down", retry_after_s=7), ThrottledError("x", retry_after_s=10_000)])
    call_with_retry(fn, RetryPolicy(max_retry_after_s=60), sleep=waits.append)
    assert waits == [7, 60]


@pytest.mark.parametrize("err", [AuthError("no"), UrlExpiredError("mint a new URL"), ValueError("bug")])
def test_non_retryable_errors_propagate_at_once(err: Exception) -> None:
    fn = Flaky([err])
    with pytest.raises(type(err)):
        call_with_retry(fn, RetryPolicy(), sleep=lambda s: None)
    assert fn.calls == 1


def test_attempts_are_bounded_and_keep_the_cause() -> None:
    fn = Flaky([ConnectionLostError(str(i)) for i in range(10)])
    with pytest.raises(RetryBudgetExceeded) as info:
        call_with_retry(fn, RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert fn.calls == 3
    assert isinstance(info.value.last_error, ConnectionLostError)


def test_shared_budget_bounds_retries_across_requests() -> None:
    budget = RecoveryBudget(2)
    policy = RetryPolicy(max_attempts=10)
    call_with_retry(Flaky([ConnectionLostError("a")]), policy, budget=budget, sleep=lambda s: None)
    call_with_retry(Flaky([ConnectionLostError("b")]), policy, budget=budget, sleep=lambda s: None)
    with pytest.raises(RetryBudgetExceeded, match="2 retries across the transfer"):
        call_with_retry(Flaky([ConnectionLostError("c")]), policy, budget=budget, sleep=lambda s: None)
    assert budget.used == 3


def test_cancellation_interrupts_a_backoff_wait() -> None:
    cancel = threading.Event()
    fn = Flaky([ThrottledError("wait long", retry_after_s=30)])
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(Cancelled):
        call_with_retry(fn, RetryPolicy(), cancel=cancel)
    assert fn.calls == 1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay_s=5, max_delay_s=1)


def test_rate_limited_retries_are_paced_not_counted() -> None:
    """429s (a limit shared with the workspace's other clients) spend neither attempts nor the budget."""
    waits: list[float] = []
    budget = RecoveryBudget(0)
    fn = Flaky([RateLimitedError("429", retry_after_s=1) for _ in range(20)])
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.1, max_delay_s=0.1)
    assert call_with_retry(fn, policy, budget=budget, sleep=waits.append) == "done"
    assert fn.calls == 21 and budget.used == 0
    assert all(1.05 <= w <= 1.101 for w in waits)  # Retry-After plus jitter, so refused clients spread


def test_rate_limited_retries_are_bounded_by_time() -> None:
    waits: list[float] = []
    fn = Flaky([RateLimitedError("429", retry_after_s=10) for _ in range(20)])
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.1, max_rate_limited_wait_s=35)
    with pytest.raises(RetryBudgetExceeded) as info:
        call_with_retry(fn, policy, sleep=waits.append)
    # three paced waits fit in 35 s; then 429s count as attempts: two more waits, the third attempt fails
    assert len(waits) == 5 and sum(waits[:3]) <= 35
    assert isinstance(info.value.last_error, RateLimitedError)


def test_rate_limited_counts_as_an_attempt_when_pacing_is_off() -> None:
    """The trigger's one-request-per-check hook: a 429 is reported at once, its own loop backs off."""
    fn = Flaky([RateLimitedError("429", retry_after_s=1)])
    with pytest.raises(RetryBudgetExceeded):
        call_with_retry(fn, RetryPolicy(max_attempts=1, max_rate_limited_wait_s=0), sleep=lambda s: None)
    assert fn.calls == 1
