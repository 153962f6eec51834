"""The sync example DAGs under ``airflow dags test`` against the Files API emulator: the scheduled sync
twice (the second sends and reads nothing), and the mapped fan-out (plan, batches, merge)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine.sync import FRAGMENTS_DIR, MANIFEST_NAME
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

from .conftest import EXAMPLE_DAGS, AirflowHome

pytestmark = pytest.mark.airflow

TARGET = "/Volumes/main/default/landing/adt/sync"
FANOUT_TARGET = "/Volumes/main/default/landing/adt/sync-fanout"


def xcoms(home: AirflowHome, dag_id: str, task_id: str) -> list[tuple[int, Any]]:
    """(map_index, value) of a task's return values, oldest run first."""
    conn = sqlite3.connect(f"file:{home.db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT x.map_index, x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id"
            " WHERE x.dag_id = ? AND x.task_id = ? AND x.key = 'return_value' ORDER BY r.id, x.map_index",
            (dag_id, task_id),
        ).fetchall()
    finally:
        conn.close()
    return [(int(i), json.loads(v)) for i, v in rows]


@pytest.fixture(scope="module")
def home(adt_airflow: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    # the workers' hash cache lives in this test's own state folder
    adt_airflow.env["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    return adt_airflow


def test_scheduled_sync_twice_second_run_sends_and_reads_nothing(
    home: AirflowHome, adt_emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tree = tmp_path_factory.mktemp("sync-tree")
    conf = {"local_dir": str(tree), "volume_dir": TARGET, "files": 60}
    first = home.dags_test("databricks_volume_sync", conf, dags_folder=EXAMPLE_DAGS)
    assert first.succeeded, first.output[-4000:]
    second = home.dags_test("databricks_volume_sync", conf, dags_folder=EXAMPLE_DAGS)
    assert second.succeeded, second.output[-4000:]

    (_, a), (_, b) = xcoms(home, "databricks_volume_sync", "sync")
    assert (a["uploaded"], a["failed"], a["skipped"]) == (60, 0, 0)
    assert (b["uploaded"], b["failed"], b["skipped"]) == (0, 0, 60)
    assert (b["files_hashed"], b["bytes_hashed"], b["hash_cache_hits"]) == (0, 0, 60)
    for rel in ("part-00/events-00000.csv", "part-09/events-00059.csv"):
        assert adt_emulator.local_path(f"{TARGET}/{rel}").read_bytes() == (tree / rel).read_bytes()
    assert "Sending 0 files (0 bytes), 60 unchanged" in second.output
    assert adt_emulator.token not in first.output + second.output


def test_fanout_dag_uploads_batches_on_mapped_tasks_and_merges(
    home: AirflowHome, adt_emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tree = tmp_path_factory.mktemp("fanout-tree")
    conf = {"local_dir": str(tree), "volume_dir": FANOUT_TARGET, "files": 45, "batches": 3}
    run = home.dags_test(
        "databricks_volume_sync_fanout",
        conf,
        dags_folder=EXAMPLE_DAGS,
        dag_file=EXAMPLE_DAGS / "databricks_volume_sync.py",
    )
    assert run.succeeded, run.output[-4000:]

    [(_, batches)] = xcoms(home, "databricks_volume_sync_fanout", "plan")
    assert len(batches) == 3 and sum(len(b) for b in batches) == 45
    uploads = xcoms(home, "databricks_volume_sync_fanout", "upload_batch")
    assert [i for i, _ in uploads] == [0, 1, 2]
    assert [u["uploaded"] for _, u in uploads] == [len(b) for b in batches]
    [(_, merged)] = xcoms(home, "databricks_volume_sync_fanout", "merge")
    assert merged == {"fragments": 3, "files": 45}
    manifest = json.loads(adt_emulator.local_path(f"{FANOUT_TARGET}/{MANIFEST_NAME}").read_bytes())
    assert len(manifest["files"]) == 45
    assert list(adt_emulator.local_path(f"{FANOUT_TARGET}/{FRAGMENTS_DIR}").iterdir()) == []
    for rel in manifest["files"]:
        assert (
            adt_emulator.local_path(f"{FANOUT_TARGET}/{rel}").read_bytes() == (Path(tree) / rel).read_bytes()
        )
