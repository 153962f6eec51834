"""DatabricksVolumeFileSensor and its trigger against the emulator: existence, globs, stability."""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue

from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches, split_glob
from airflow_databricks_transfer.sensors.files import DatabricksVolumeFileSensor
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.triggers.files import DatabricksVolumeFileTrigger
from tests.integration.conftest import DictStore, throttled, through_frozen_window

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"


def test_split_glob() -> None:
    assert split_glob(f"{VOL}/a/b.csv") == (f"{VOL}/a/b.csv", None)
    assert split_glob(f"{VOL}/in/*/part-*.csv") == (f"{VOL}/in", f"{VOL}/in/*/part-*.csv")


def test_find_matches_follows_the_glob_depth(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    files_api_emulator.seed(
        files=[
            {"path": f"{VOL}/in/a.csv", "size": 1},
            {"path": f"{VOL}/in/b.txt", "size": 2},
            {"path": f"{VOL}/in/sub/c.csv", "size": 3},
        ]
    )
    hook = DatabricksFilesHook(conn)
    assert find_matches(hook, f"{VOL}/in/*.csv") == {f"{VOL}/in/a.csv": 1}
    assert find_matches(hook, f"{VOL}/in/*/*.csv") == {f"{VOL}/in/sub/c.csv": 3}
    assert find_matches(hook, f"{VOL}/in/b.txt") == {f"{VOL}/in/b.txt": 2}
    assert find_matches(hook, f"{VOL}/missing/*.csv") == {}


def test_trigger_serialize_round_trips() -> None:
    trigger = DatabricksVolumeFileTrigger(f"{VOL}/x/*.csv", "dbx", poke_interval_s=3.5, stable_checks=2)
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs  # what the triggerer stores in the DB


def test_trigger_fires_once_the_file_is_stable(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    path = f"{VOL}/late/data.csv"
    threading.Timer(0.5, lambda: files_api_emulator.seed(files=[{"path": path, "size": 10}])).start()

    async def first_event() -> Any:
        trigger = DatabricksVolumeFileTrigger(f"{VOL}/late/*.csv", conn, poke_interval_s=0.2, stable_checks=2)
        async for event in trigger.run():
            return event.payload
        return None

    payload = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    assert payload == {"status": "success", "matches": {path: 10}}


def test_trigger_reports_errors_as_events(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    files_api_emulator.add_fault(route="files.head", status=403, times=None)

    async def first_event() -> Any:
        async for event in DatabricksVolumeFileTrigger(f"{VOL}/x.csv", conn, poke_interval_s=0.1).run():
            return event.payload
        return None

    payload = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    assert payload["status"] == "error" and "AuthError" in payload["message"]


def test_poke_mode_waits_for_existence(conn: str, files_api_emulator: FilesApiEmulator) -> None:
    sensor = DatabricksVolumeFileSensor(task_id="s", path=f"{VOL}/p/*.bin", databricks_conn_id=conn)
    ctx: Any = {}
    assert not sensor.poke(ctx).is_done  # type: ignore[union-attr]
    files_api_emulator.seed(files=[{"path": f"{VOL}/p/1.bin", "size": 7}])
    result = sensor.poke(ctx)
    assert result.is_done and result.xcom_value == {f"{VOL}/p/1.bin": 7}  # type: ignore[union-attr]


def test_reschedule_mode_keeps_stability_in_the_state_store(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    path = f"{VOL}/grow/f.bin"
    store = DictStore()
    ctx: Any = {"task_state_store": store}

    def poke_in_a_new_process() -> bool:  # reschedule mode: a fresh operator object every poke
        sensor = DatabricksVolumeFileSensor(
            task_id="s", path=path, databricks_conn_id=conn, stable_checks=2, mode="reschedule"
        )
        return bool(sensor.poke(ctx).is_done)  # type: ignore[union-attr]

    files_api_emulator.seed(files=[{"path": path, "size": 100}])
    assert not poke_in_a_new_process()
    files_api_emulator.seed(files=[{"path": path, "size": 200}])  # still growing: the count restarts
    assert not poke_in_a_new_process()
    assert store.data["stability"]["same"] == 0
    assert not poke_in_a_new_process()  # unchanged once
    assert poke_in_a_new_process()  # unchanged twice: done
    assert "stability" not in store.data  # cleaned up


def test_poke_pages_through_an_arbitrary_order_and_rides_out_the_request_limit(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    """A glob over a directory listed two entries a page, in the emulator's arbitrary order, with proto3
    omissions (an empty file has no file_size): the matches and their sizes are exact. The workspace's
    per-second limit is used up after one call and stays so until more 429s than the hook's attempt
    budget were answered: the poke waits them out (before issue 8 it failed the task)."""
    emu = files_api_emulator
    emu.seed(
        files=[
            {"path": f"{VOL}/many/a.csv", "size": 4},
            {"path": f"{VOL}/many/b.csv", "size": 0},
            {"path": f"{VOL}/many/c.txt", "size": 1},
            {"path": f"{VOL}/many/d.csv", "size": 9},
            {"path": f"{VOL}/many/sub.csv/e.csv", "size": 2},  # a folder whose name matches: not a match
        ]
    )
    emu.update_settings(list_page_size_max=2, rate_limit_per_s=1, rate_limit_retry_after_s=0)
    sensor = DatabricksVolumeFileSensor(task_id="s", path=f"{VOL}/many/*.csv", databricks_conn_id=conn)
    enough = RetryPolicy().max_attempts + 1
    poked = through_frozen_window(emu, lambda: sensor.poke({}), enough=enough)
    assert isinstance(poked, PokeReturnValue) and poked.is_done
    assert poked.xcom_value == {f"{VOL}/many/a.csv": 4, f"{VOL}/many/b.csv": 0, f"{VOL}/many/d.csv": 9}
    assert throttled(emu, "directories.get") >= enough
    assert len([r for r in emu.requests("directories.get") if r.status == 200]) == 3  # three pages
