"""Trigger behind the deferrable DatabricksVolumeFileSensor.

The checks are blocking HTTP calls, so each runs in a worker thread (``asyncio.to_thread``): the
triggerer's event loop, shared by every deferred task, is never blocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_databricks_transfer.engine.stability import StabilityTracker
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


class DatabricksVolumeFileTrigger(BaseTrigger):
    def __init__(
        self, path: str, databricks_conn_id: str, poke_interval_s: float = 60.0, stable_checks: int = 0
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = path
        self.databricks_conn_id = databricks_conn_id
        self.poke_interval_s = poke_interval_s
        self.stable_checks = stable_checks

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "path": self.path,
                "databricks_conn_id": self.databricks_conn_id,
                "poke_interval_s": self.poke_interval_s,
                "stable_checks": self.stable_checks,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DatabricksFilesHook(self.databricks_conn_id)
        tracker = StabilityTracker(self.stable_checks)
        while True:
            try:
                matches = await asyncio.to_thread(find_matches, hook, self.path)
            except Exception as err:  # noqa: BLE001 - the sensor turns it into a task failure
                yield _event({"status": "error", "message": f"{type(err).__name__}: {err}"})
                return
            done = bool(matches) if self.stable_checks == 0 else tracker.observe(matches)
            if done:
                yield _event({"status": "success", "matches": matches})
                return
            self.log.info(
                "%s: %d match(es); checking again in %.0f s", self.path, len(matches), self.poke_interval_s
            )
            await asyncio.sleep(self.poke_interval_s)
