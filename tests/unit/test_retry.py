"""Retry decisions: by error type, Retry-After honoured, jittered backoff, bounded budgets, cancellable."""

from __future__ import annotations

import random
import threading

import pytest

from airflow_databricks_transfer.engine.errors import (
    AuthError,
    ConnectionLostError,
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
