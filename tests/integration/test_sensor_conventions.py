"""DatabricksVolumeFileSensor conventions against the emulator: ``[operators] default_deferrable``, a check
before deferring, templated ``stable_checks``, and no stability key left in the task state store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    TaskDeferred,
)

from airflow_databricks_transfer.sensors.files import STABILITY_KEY, DatabricksVolumeFileSensor
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.triggers.files import DatabricksVolumeFileTrigger
from tests.integration.conftest import REPO, DictStore, context

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"
LIST = "directories.get"


class RescheduledTI:
    """What BaseSensorOperator.execute asks of the task instance in reschedule mode."""

    def __init__(self, try_number: int = 1, first_poke: datetime | None = None) -> None:
        self.try_number = try_number
        self.first_poke = first_poke

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_poke


@pytest.mark.parametrize(("setting", "expected"), [("True", True), (None, False)])
def test_deferrable_defaults_to_operators_default_deferrable(setting: str | None, expected: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"}
    if setting is not None:
        env["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] = setting
    code = (
        "from airflow_databricks_transfer.sensors.files import DatabricksVolumeFileSensor as S\n"
        "print(S(task_id='s', path='/Volumes/c/s/v/x').deferrable,"
        " S(task_id='t', path='/x', deferrable=False).deferrable)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=180,
        check=True,
    ).stdout.split()
    assert out[-2:] == [str(expected), "False"]  # an explicit argument still wins


def test_deferrable_sensor_returns_at_once_when_the_file_is_there(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    path = f"{VOL}/ready/a.csv"
    files_api_emulator.seed(files=[{"path": path, "size": 12}])
    sensor = DatabricksVolumeFileSensor(
        task_id="s", path=f"{VOL}/ready/*.csv", databricks_conn_id=conn, deferrable=True
    )
    assert sensor.execute({}) == {path: 12}  # no TaskDeferred: no trigger round trip
    assert len(files_api_emulator.requests(route=LIST)) == 1


def test_deferrable_sensor_defers_when_missing_and_its_first_check_counts(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    sensor = DatabricksVolumeFileSensor(
        task_id="s", path=f"{VOL}/later/*.csv", databricks_conn_id=conn, deferrable=True, poke_interval=0.05
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert isinstance(deferred.value.trigger, DatabricksVolumeFileTrigger)
    assert deferred.value.method_name == "execute_complete"

    # With stability checks, the sizes seen before deferring travel to the trigger (serialized).
    path = f"{VOL}/grown/a.csv"
    files_api_emulator.seed(files=[{"path": path, "size": 5}])
    sensor = DatabricksVolumeFileSensor(
        task_id="s2",
        path=f"{VOL}/grown/*.csv",
        databricks_conn_id=conn,
        deferrable=True,
        stable_checks=1,
        poke_interval=0.05,
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, DatabricksVolumeFileTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["stability_state"] == {"sizes": {path: 5}, "same": 0}
    rebuilt = DatabricksVolumeFileTrigger(**json.loads(json.dumps(kwargs)))
    before = len(files_api_emulator.requests(route=LIST))

    async def first() -> Any:
        async for event in rebuilt.run():
            return event.payload
        return None

    assert asyncio.run(asyncio.wait_for(first(), timeout=60)) == {"status": "success", "matches": {path: 5}}
    assert len(files_api_emulator.requests(route=LIST)) - before == 1  # one more check sufficed


def test_stable_checks_is_templated(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    path = f"{VOL}/tpl/a.csv"
    files_api_emulator.seed(files=[{"path": path, "size": 3}])
    sensor = DatabricksVolumeFileSensor(
        task_id="s", path=f"{VOL}/tpl/*.csv", databricks_conn_id=conn, stable_checks="{{ params.n }}"
    )
    sensor.render_template_fields({"params": {"n": 2}})
    assert sensor.stable_checks == "2"
    ctx: Any = {}
    assert [sensor.poke(ctx).is_done for _ in range(3)] == [False, False, True]  # type: ignore[union-attr]

    bad = DatabricksVolumeFileSensor(
        task_id="b", path=path, databricks_conn_id=conn, stable_checks="{{ 'x' }}"
    )
    bad.render_template_fields({})
    with pytest.raises(AirflowException, match="stable_checks must be a whole number"):
        bad.poke({})


def reschedule_sensor(conn: str, path: str, **kwargs: Any) -> DatabricksVolumeFileSensor:
    return DatabricksVolumeFileSensor(
        task_id="s",
        path=path,
        databricks_conn_id=conn,
        stable_checks=3,
        mode="reschedule",
        poke_interval=60,
        **kwargs,
    )


def test_stability_key_is_removed_when_the_sensor_times_out(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    path = f"{VOL}/slow/f.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 1}])
    store = DictStore()
    with pytest.raises(AirflowRescheduleException):  # poke 1: not stable yet, comes back later
        reschedule_sensor(conn, path, timeout=600).execute(
            context(task_state_store=store, ti=RescheduledTI())
        )
    assert store.data[STABILITY_KEY]["same"] == 0
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    with pytest.raises(AirflowSensorTimeout):  # poke 2, an hour after the first: past the timeout
        reschedule_sensor(conn, path, timeout=600).execute(
            context(task_state_store=store, ti=RescheduledTI(first_poke=long_ago))
        )
    assert STABILITY_KEY not in store.data


def test_stability_key_is_removed_when_a_poke_fails(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    path = f"{VOL}/fail/f.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 1}])
    store = DictStore()
    ctx: Any = {"task_state_store": store, "ti": RescheduledTI()}
    with pytest.raises(AirflowRescheduleException):
        reschedule_sensor(conn, path).execute(ctx)
    assert STABILITY_KEY in store.data
    files_api_emulator.add_fault(route="files.head", status=403, times=None)
    with pytest.raises(Exception, match=r"AuthError|403|Invalid"):
        reschedule_sensor(conn, path).execute(ctx)
    assert STABILITY_KEY not in store.data


def test_stability_key_is_removed_on_success_and_a_stale_one_is_ignored(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    path = f"{VOL}/done/f.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 7}])
    store = DictStore()
    # left behind by try 1, killed before it could clean up: "already unchanged twice"
    store.data[STABILITY_KEY] = {"sizes": {path: 7}, "same": 2, "try_number": 1}
    ctx: Any = {"task_state_store": store, "ti": RescheduledTI(try_number=2)}
    with pytest.raises(AirflowRescheduleException):  # try 2 counts from scratch, so not done yet
        reschedule_sensor(conn, path).execute(ctx)
    assert store.data[STABILITY_KEY] == {"sizes": {path: 7}, "same": 0, "try_number": 2}
    for _ in range(2):
        with pytest.raises(AirflowRescheduleException):
            reschedule_sensor(conn, path).execute(ctx)
    assert reschedule_sensor(conn, path).execute(ctx) == {path: 7}
    assert store.data == {}
