"""OpenLineage sees both ends of each transfer in a real DAG run (``airflow dags test``, OpenLineage's file
transport): the upload reads a local file and writes a Volume file, the download the reverse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.airflow.conftest import AirflowHome
from tests.airflow.test_dags import describe

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
REMOTE = "/Volumes/main/default/landing/adt/lineage.bin"


def complete_events(log_file: Path) -> dict[str, dict[str, Any]]:
    """The COMPLETE event of each task, by task id (job name is ``<dag>.<task>``)."""
    events: dict[str, dict[str, Any]] = {}
    for line in log_file.read_text().splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("eventType") == "COMPLETE" and "." in event["job"]["name"]:
            events[event["job"]["name"].split(".", 1)[1]] = event
    return events


def names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def test_openlineage_events_name_local_files_and_volume_paths(
    adt_airflow: AirflowHome, adt_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"lineage\n" * 4096)
    copy = tmp_path / "copy.bin"
    log_file = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(log_file), "append": True}
    home = AirflowHome(
        adt_airflow.home, {**adt_airflow.env, "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport)}
    )
    run = home.dags_test("adt_lineage", {"source": str(source), "target": str(copy)})
    assert run.succeeded, describe(run)
    assert copy.read_bytes() == source.read_bytes()

    events = complete_events(log_file)
    volume_ns = f"dbfs://{urlsplit(adt_emulator.url).netloc.lower()}"
    upload, download = events["upload"], events["download"]
    assert names(upload["inputs"]) == [("file", str(source))]
    assert names(upload["outputs"]) == [(volume_ns, REMOTE)]
    assert names(download["inputs"]) == [(volume_ns, REMOTE)]
    assert names(download["outputs"]) == [("file", str(copy))]
