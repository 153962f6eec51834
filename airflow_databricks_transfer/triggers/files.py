"""Trigger behind the deferrable DatabricksVolumeFileSensor.

The checks are blocking HTTP calls, so each runs in a worker thread (``asyncio.to_thread``): the
triggerer's event loop, shared by every deferred task, is never blocked.

A wait can last days, so a transient failure of one check (5xx, throttling, a dropped connection) must
not end it: the trigger retries with capped exponential backoff (honouring Retry-After) and ends the wait
with an error only when checks kept failing for ``transient_error_timeout_s``, or at once on an error no
retry can fix (bad credentials, a malformed path).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_databricks_transfer.engine.errors import (
    RetryableError,
    RetryBudgetExceeded,
    SessionLostError,
    UrlExpiredError,
)
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.stability import StabilityTracker
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches

DEFAULT_TRANSIENT_ERROR_TIMEOUT_S = 600.0


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


def is_transient(err: BaseException) -> bool:
    """Errors a later check may not see: the engine's retryable ones and plain network/OS errors."""
    return isinstance(
        err, (RetryableError, RetryBudgetExceeded, UrlExpiredError, SessionLostError, OSError, TimeoutError)
    )


class DatabricksVolumeFileTrigger(BaseTrigger):
    """Fire once ``path`` (a file or a glob) has matches, stable over ``stable_checks`` checks.

    :param path: a Volume file path or a glob (``*`` does not cross ``/``).
    :param databricks_conn_id: the Airflow connection (type ``databricks``).
    :param poke_interval_s: seconds between checks.
    :param stable_checks: further checks the sizes must stay the same for (0: existence is enough).
    :param stability_state: sizes and count already seen (the sensor's check before deferring).
    :param transient_error_timeout_s: how long checks may keep failing transiently before the wait ends
        with an error; the count restarts after every successful check.
    :param retry_base_delay_s: first backoff delay after a failed check (doubles, with jitter).
    :param retry_max_delay_s: longest backoff delay (and cap on Retry-After).
    """

    def __init__(
        self,
        path: str,
        databricks_conn_id: str,
        poke_interval_s: float = 60.0,
        stable_checks: int = 0,
        stability_state: Mapping[str, Any] | None = None,
        transient_error_timeout_s: float = DEFAULT_TRANSIENT_ERROR_TIMEOUT_S,
        retry_base_delay_s: float = 1.0,
        retry_max_delay_s: float = 60.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = path
        self.databricks_conn_id = databricks_conn_id
        self.poke_interval_s = poke_interval_s
        self.stable_checks = stable_checks
        self.stability_state = dict(stability_state) if stability_state else None
        self.transient_error_timeout_s = transient_error_timeout_s
        self.retry_base_delay_s = retry_base_delay_s
        self.retry_max_delay_s = retry_max_delay_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "databricks_conn_id": self.databricks_conn_id,
                "poke_interval_s": self.poke_interval_s,
                "stable_checks": self.stable_checks,
                "stability_state": self.stability_state,
                "transient_error_timeout_s": self.transient_error_timeout_s,
                "retry_base_delay_s": self.retry_base_delay_s,
                "retry_max_delay_s": self.retry_max_delay_s,
            },
        )

    def _backoff_s(self, failures: int, err: BaseException, rng: random.Random) -> float:
        retry_after = getattr(err, "retry_after_s", None)
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            return min(float(retry_after), self.retry_max_delay_s)
        cap = min(self.retry_max_delay_s, self.retry_base_delay_s * 2 ** (failures - 1))
        return rng.uniform(cap / 2, cap)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # one request per check: this loop is the retry loop, and its time bound must hold
        # (a 429 too: max_rate_limited_wait_s=0 keeps the hook from pacing it inside one check)
        hook = DatabricksFilesHook(
            self.databricks_conn_id, metadata_retry=RetryPolicy(max_attempts=1, max_rate_limited_wait_s=0)
        )
        tracker = StabilityTracker(self.stable_checks, self.stability_state)
        rng = random.Random()  # noqa: S311 - jitter, not secrets
        failing_since: float | None = None
        failures = 0
        while True:
            try:
                matches = await asyncio.to_thread(find_matches, hook, self.path)
            except Exception as caught:  # noqa: BLE001 - classified here; the sensor fails the task
                err: BaseException = caught
                if isinstance(err, RetryBudgetExceeded) and err.last_error is not None:
                    err = err.last_error  # a single attempt gave up: report what actually failed
                what = f"{type(err).__name__}: {err}"
                if not is_transient(err):
                    yield _event({"status": "error", "message": what})
                    return
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                failures += 1
                delay = self._backoff_s(failures, err, rng)
                failed_for = now - failing_since
                if failed_for + delay > self.transient_error_timeout_s:
                    yield _event(
                        {
                            "status": "error",
                            "message": f"checks kept failing for {failed_for:.1f} s ({failures} attempts, "
                            f"limit {self.transient_error_timeout_s:.0f} s); last error: {what}",
                        }
                    )
                    return
                self.log.warning(
                    "%s: check failed (%s); retry %d in %.2f s (failing for %.1f of %.0f s allowed)",
                    self.path,
                    what,
                    failures,
                    delay,
                    failed_for,
                    self.transient_error_timeout_s,
                )
                await asyncio.sleep(delay)
                continue
            if failures:
                self.log.info("%s: check succeeded again after %d failed attempt(s)", self.path, failures)
            failing_since, failures = None, 0
            done = bool(matches) if self.stable_checks == 0 else tracker.observe(matches)
            if done:
                yield _event({"status": "success", "matches": matches})
                return
            self.log.info(
                "%s: %d match(es); checking again in %.0f s", self.path, len(matches), self.poke_interval_s
            )
            await asyncio.sleep(self.poke_interval_s)
