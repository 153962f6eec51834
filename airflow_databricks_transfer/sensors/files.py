"""Wait for a file (or a glob) to exist in a Unity Catalog Volume and, optionally, to stop growing.

Works in ``poke`` and ``reschedule`` mode and deferred (``deferrable=True``, default from
``[operators] default_deferrable``: the waiting runs in the triggerer and frees the worker slot). A
deferrable sensor checks once before deferring, so a file that is already there costs no trigger round
trip. A file counts as stable once its size was the same for ``stable_checks`` consecutive checks, like
``S3KeysUnchangedSensor``; in reschedule mode the sizes seen so far are kept in the task state store,
because XCom is wiped before every poke. That key is removed when the sensor ends, however it ends, and a
key left by an earlier try (a killed worker) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowException, AirflowRescheduleException, TaskDeferred

from airflow_databricks_transfer.engine.stability import StabilityTracker
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches
from airflow_databricks_transfer.triggers.files import (
    DEFAULT_TRANSIENT_ERROR_TIMEOUT_S,
    DatabricksVolumeFileTrigger,
    is_transient,
)

STABILITY_KEY = "stability"


class DatabricksVolumeFileSensor(BaseSensorOperator):
    """Wait until ``path`` (a file path or a glob such as ``/Volumes/c/s/v/in/*.csv``) exists.

    :param path: a Volume file path or a glob; ``*`` does not cross ``/`` (templated).
    :param databricks_conn_id: the Airflow connection (type ``databricks``) (templated).
    :param stable_checks: also wait until the sizes of the matches stayed the same over this many
        further checks (0: existence is enough) (templated).
    :param deferrable: wait in the triggerer instead of holding a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param transient_error_timeout_s: deferrable only: how long the trigger's checks may keep failing
        transiently (5xx, throttling, dropped connections; retried with backoff) before the wait fails.
    Returns (XCom) the matching paths with their sizes.
    """

    template_fields: Sequence[str] = ("path", "databricks_conn_id", "stable_checks")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        path: str,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        stable_checks: int | str = 0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        transient_error_timeout_s: float = DEFAULT_TRANSIENT_ERROR_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(stable_checks, int) and stable_checks < 0:
            raise ValueError("stable_checks must be >= 0")
        self.path = path
        self.databricks_conn_id = databricks_conn_id
        self.stable_checks = stable_checks
        self.deferrable = deferrable
        self.transient_error_timeout_s = transient_error_timeout_s
        self._tracker: StabilityTracker | None = None
        self._stability_cleared = False

    @cached_property
    def hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(self.databricks_conn_id)

    @property
    def _needed_checks(self) -> int:
        """``stable_checks`` after templating (a rendered value is a string)."""
        try:
            value = int(self.stable_checks)
        except (TypeError, ValueError):
            raise AirflowException(
                f"stable_checks must be a whole number, got {self.stable_checks!r}"
            ) from None
        if value < 0:
            raise AirflowException(f"stable_checks must be >= 0, got {value}")
        return value

    def execute(self, context: Context) -> Any:
        try:
            result = self._execute(context)
        except (AirflowRescheduleException, TaskDeferred):
            raise  # still waiting: the stability count must survive until the next poke
        except BaseException:
            self._forget_stability(context)
            raise
        self._forget_stability(context)
        return result

    def _execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)
        except Exception as err:
            if not is_transient(err):
                raise
            self.log.warning("First check of %s failed (%s); the trigger will retry", self.path, err)
        else:
            if isinstance(first, PokeReturnValue) and first.is_done:
                self.log.info("%s is already there; not deferring", self.path)
                return first.xcom_value
        timeout = float(self.timeout) if self.timeout else None  # BaseSensorOperator keeps seconds
        self.defer(
            trigger=DatabricksVolumeFileTrigger(
                path=self.path,
                databricks_conn_id=self.databricks_conn_id,
                poke_interval_s=float(self.poke_interval),
                stable_checks=self._needed_checks,
                stability_state=self._tracker.state() if self._tracker is not None else None,
                transient_error_timeout_s=float(self.transient_error_timeout_s),
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

    def _store(self, context: Context) -> Any:
        return context.get("task_state_store") if self.reschedule else None

    def _forget_stability(self, context: Context) -> None:
        store = self._store(context)
        if store is None or self._stability_cleared or str(self.stable_checks).strip() == "0":
            return  # nothing stored: no stability checks, or poke already removed it
        try:
            store.delete(STABILITY_KEY)
        except Exception as err:  # noqa: BLE001 - never hide the sensor's own outcome behind this
            self.log.warning("Could not remove the sensor's %r state: %s", STABILITY_KEY, err)

    def _saved_state(self, context: Context, store: Any) -> Mapping[str, Any] | None:
        """The stored sizes, if they were written by this try (a killed earlier try may have left some)."""
        saved = store.get(STABILITY_KEY)
        ti = context.get("ti")
        try_number = getattr(ti, "try_number", None)
        if not isinstance(saved, Mapping) or saved.get("try_number") != try_number:
            return None
        sizes, same = saved.get("sizes"), saved.get("same")
        if not isinstance(sizes, Mapping) or not isinstance(same, int) or same < 0:
            return None
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in sizes.items()):
            return None
        return saved

    def poke(self, context: Context) -> PokeReturnValue | bool:
        needed = self._needed_checks
        matches = find_matches(self.hook, self.path)
        if needed == 0:
            self.log.info("%s: %d match(es)", self.path, len(matches))
            return PokeReturnValue(is_done=bool(matches), xcom_value=matches)
        store = self._store(context)
        if self._tracker is None:
            saved = self._saved_state(context, store) if store is not None else None
            self._tracker = StabilityTracker(needed, saved)
        done = self._tracker.observe(matches)
        if store is not None and done:
            store.delete(STABILITY_KEY)
            self._stability_cleared = True
        elif store is not None:
            ti = context.get("ti")
            state = {**self._tracker.state(), "try_number": getattr(ti, "try_number", None)}
            store.set(STABILITY_KEY, state)
        self.log.info(
            "%s: %d match(es), unchanged for %d of %d checks",
            self.path,
            len(matches),
            self._tracker.same,
            needed,
        )
        return PokeReturnValue(is_done=done, xcom_value=matches)
