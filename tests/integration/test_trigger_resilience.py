"""The deferrable sensor's trigger against the emulator with injected faults: a transient listing failure
does not end the wait, a persistent one does after the configured bound, and a check lists only the
folders the glob can reach."""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any

import pytest

from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.triggers.files import DatabricksVolumeFileTrigger

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"
LIST = "directories.get"


def round_trip(trigger: DatabricksVolumeFileTrigger) -> DatabricksVolumeFileTrigger:
    """What the triggerer does: serialize, store as JSON, rebuild from the class path."""
    path, kwargs = trigger.serialize()
    stored = json.loads(json.dumps(kwargs))
    module, _, name = path.rpartition(".")
    rebuilt: DatabricksVolumeFileTrigger = getattr(importlib.import_module(module), name)(**stored)
    assert rebuilt.serialize() == (path, kwargs)
    return rebuilt


def first_event(trigger: DatabricksVolumeFileTrigger) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            payload: dict[str, Any] = event.payload
            return payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def listed(emu: FilesApiEmulator) -> list[str]:
    return [r.path for r in emu.requests(route=LIST)]


def test_every_argument_survives_serialization() -> None:
    trigger = DatabricksVolumeFileTrigger(
        f"{VOL}/x/*.csv",
        "dbx",
        poke_interval_s=3.5,
        stable_checks=2,
        stability_state={"sizes": {f"{VOL}/x/a.csv": 5}, "same": 1},
        transient_error_timeout_s=42.0,
        retry_base_delay_s=0.25,
        retry_max_delay_s=7.0,
    )
    rebuilt = round_trip(trigger)
    assert rebuilt.stability_state == {"sizes": {f"{VOL}/x/a.csv": 5}, "same": 1}
    assert (rebuilt.transient_error_timeout_s, rebuilt.retry_base_delay_s, rebuilt.retry_max_delay_s) == (
        42.0,
        0.25,
        7.0,
    )


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_one_failed_listing_does_not_end_the_wait(
    conn: str, files_api_emulator: FilesApiEmulator, status: int, capfd: pytest.CaptureFixture[str]
) -> None:
    path = f"{VOL}/blip/in/a.csv"
    files_api_emulator.seed(files=[{"path": path, "size": 4}])
    files_api_emulator.add_fault(route=LIST, status=status, times=1)
    trigger = round_trip(
        DatabricksVolumeFileTrigger(
            f"{VOL}/blip/in/*.csv", conn, poke_interval_s=0.1, retry_base_delay_s=0.05, retry_max_delay_s=0.2
        )
    )
    payload = first_event(trigger)
    assert payload == {"status": "success", "matches": {path: 4}}
    statuses = [r.status for r in files_api_emulator.requests(route=LIST)]
    assert statuses == [status, 200]  # failed once, retried, and the retry found the file
    log = capfd.readouterr().out  # Airflow's structlog writes task and trigger logs to stdout
    retry_lines = [line for line in log.splitlines() if "check failed" in line]
    kind = {429: "RateLimitedError", 503: "ThrottledError"}.get(status, "RetryableError")
    assert len(retry_lines) == 1 and kind in retry_lines[0] and "retry 1 in" in retry_lines[0]


def test_a_failed_head_of_a_plain_path_does_not_end_the_wait(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    path = f"{VOL}/blip/one.csv"
    files_api_emulator.seed(files=[{"path": path, "size": 9}])
    files_api_emulator.add_fault(route="files.head", status=502, times=2)
    trigger = round_trip(
        DatabricksVolumeFileTrigger(path, conn, poke_interval_s=0.1, retry_base_delay_s=0.05)
    )
    assert first_event(trigger) == {"status": "success", "matches": {path: 9}}
    assert [r.status for r in files_api_emulator.requests(route="files.head")] == [502, 502, 200]


def test_persistent_failure_ends_the_wait_after_the_bound(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    files_api_emulator.add_fault(route=LIST, status=500, times=None)
    trigger = round_trip(
        DatabricksVolumeFileTrigger(
            f"{VOL}/down/*.csv",
            conn,
            poke_interval_s=0.1,
            transient_error_timeout_s=1.0,
            retry_base_delay_s=0.05,
            retry_max_delay_s=0.2,
        )
    )
    payload = first_event(trigger)
    assert payload["status"] == "error"
    assert "kept failing" in payload["message"] and "limit 1 s" in payload["message"]
    assert "RetryableError" in payload["message"]
    attempts = files_api_emulator.requests(route=LIST)
    assert len(attempts) >= 2 and all(r.status == 500 for r in attempts)  # it did retry before giving up


def test_an_error_no_retry_can_fix_ends_the_wait_at_once(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    files_api_emulator.add_fault(route=LIST, status=403, times=None)
    trigger = round_trip(DatabricksVolumeFileTrigger(f"{VOL}/deny/*.csv", conn, poke_interval_s=0.1))
    payload = first_event(trigger)
    assert payload["status"] == "error" and "AuthError" in payload["message"]
    assert len(files_api_emulator.requests(route=LIST)) == 1


def seed_tree(emu: FilesApiEmulator) -> None:
    emu.seed(
        files=[
            {"path": f"{VOL}/tree/in/a.csv", "size": 1},
            {"path": f"{VOL}/tree/in/b.txt", "size": 2},
            {"path": f"{VOL}/tree/in/s1/c.csv", "size": 3},
            {"path": f"{VOL}/tree/in/s1/deep/d.csv", "size": 4},
            {"path": f"{VOL}/tree/in/s1/deep/deeper/e.csv", "size": 5},
            {"path": f"{VOL}/tree/in/s2/c.csv", "size": 6},
            {"path": f"{VOL}/tree/in/t1/c.csv", "size": 7},
            {"path": f"{VOL}/tree/other/x/c.csv", "size": 8},
        ]
    )


def test_a_check_lists_only_the_folders_the_glob_reaches(
    conn: str, files_api_emulator: FilesApiEmulator
) -> None:
    seed_tree(files_api_emulator)
    trigger = round_trip(
        DatabricksVolumeFileTrigger(f"{VOL}/tree/in/*.csv", conn, stable_checks=2, poke_interval_s=0.05)
    )
    assert first_event(trigger) == {"status": "success", "matches": {f"{VOL}/tree/in/a.csv": 1}}
    # three checks (seen, unchanged once, unchanged twice), each one listing of the prefix folder only
    assert listed(files_api_emulator) == [f"{VOL}/tree/in"] * 3


@pytest.mark.parametrize(
    ("pattern", "matches", "folders"),
    [
        (
            f"{VOL}/tree/in/s*/c.csv",
            {f"{VOL}/tree/in/s1/c.csv": 3, f"{VOL}/tree/in/s2/c.csv": 6},
            {f"{VOL}/tree/in"},  # the literal last segment is a HEAD per matching folder, no listing
        ),
        (
            f"{VOL}/tree/*/s1/*.csv",
            {f"{VOL}/tree/in/s1/c.csv": 3},
            {f"{VOL}/tree", f"{VOL}/tree/in/s1", f"{VOL}/tree/other/s1"},  # other/s1 is absent: a 404
        ),
        (f"{VOL}/tree/in/s1/deep/*.csv", {f"{VOL}/tree/in/s1/deep/d.csv": 4}, {f"{VOL}/tree/in/s1/deep"}),
        (f"{VOL}/tree/nowhere/*.csv", {}, {f"{VOL}/tree/nowhere"}),
    ],
)
def test_glob_walks_only_as_deep_as_the_pattern(
    conn: str,
    files_api_emulator: FilesApiEmulator,
    pattern: str,
    matches: dict[str, int],
    folders: set[str],
) -> None:
    seed_tree(files_api_emulator)
    trigger = round_trip(DatabricksVolumeFileTrigger(pattern, conn, poke_interval_s=0.05))
    if matches:
        assert first_event(trigger) == {"status": "success", "matches": matches}
    else:
        assert find_matches(DatabricksFilesHook(conn), pattern) == {}
    seen = listed(files_api_emulator)
    assert set(seen) == folders and len(seen) == len(folders)
