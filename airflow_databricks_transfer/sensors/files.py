"""Wait for a file (or a glob) to exist in a Unity Catalog Volume and, optionally, to stop growing.

Works in ``poke`` and ``reschedule`` mode and deferred (``deferrable=True``: the waiting runs in the
triggerer and frees the worker slot). A file counts as stable once its size was the same for
``stable_checks`` consecutive checks, like ``S3KeysUnchangedSensor``; in reschedule mode the sizes seen
so far are kept in the task state store, because XCom is wiped before every poke.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_databricks_transfer.engine.stability import StabilityTracker
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches
from airflow_databricks_transfer.triggers.files import DatabricksVolumeFileTrigger


class DatabricksVolumeFileSensor(BaseSensorOperator):
    """Wait until ``path`` (a file path or a glob such as ``/Volumes/c/s/v/in/*.csv``) exists.

    :param stable_checks: also wait until the sizes of the matches stayed the same over this many
        further checks (0: existence is enough).
    :param deferrable: wait in the triggerer instead of holding a worker slot.
    Returns (XCom) the matching paths with their sizes.
    """

    template_fields: Sequence[str] = ("path", "databricks_conn_id")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        path: str,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        stable_checks: int = 0,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if stable_checks < 0:
            raise ValueError("stable_checks must be >= 0")
        self.path = path
        self.databricks_conn_id = databricks_conn_id
        self.stable_checks = stable_checks
        self.deferrable = deferrable
        self._tracker: StabilityTracker | None = None

    @cached_property
    def hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(self.databricks_conn_id)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        timeout = float(self.timeout) if self.timeout else None  # BaseSensorOperator keeps seconds
        self.defer(
            trigger=DatabricksVolumeFileTrigger(
                path=self.path,
                databricks_conn_id=self.databricks_conn_id,
                poke_interval_s=float(self.poke_interval),
                stable_checks=self.stable_checks,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout) if timeout else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, int]:
        if event.get("status") != "success":
            raise AirflowException(f"waiting for {self.path} failed: {event.get('message')}")
        matches: dict[str, int] = event["matches"]
        self.log.info("Found %d file(s) for %s", len(matches), self.path)
        return matches

    def poke(self, context: Context) -> PokeReturnValue | bool:
        matches = find_matches(self.hook, self.path)
        if self.stable_checks == 0:
            self.log.info("%s: %d match(es)", self.path, len(matches))
            return PokeReturnValue(is_done=bool(matches), xcom_value=matches)
        store = context.get("task_state_store") if self.reschedule else None
        if self._tracker is None:
            saved = store.get("stability") if store is not None else None
            self._tracker = StabilityTracker(
                self.stable_checks, saved if isinstance(saved, Mapping) else None
            )
        done = self._tracker.observe(matches)
        if store is not None:
            if done:
                store.delete("stability")
            else:
                store.set("stability", self._tracker.state())
        self.log.info(
            "%s: %d match(es), unchanged for %d of %d checks",
            self.path,
            len(matches),
            self._tracker.same,
            self.stable_checks,
        )
        return PokeReturnValue(is_done=done, xcom_value=matches)
