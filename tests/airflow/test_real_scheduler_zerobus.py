"""Zerobus ingest resume on retry, proven with a real Airflow scheduler: the first try of
ZerobusIngestOperator is SIGKILLed mid-stream, the scheduler's retry continues after the last acknowledged
line, and the Delta table (read with ``deltalake``) then holds every source record at least once, with
duplicates only inside the documented window: the records sent after the checkpoint the retry resumed
from, at most ``flush_every_batches`` x ``batch_records``.

The emulator runs in this process; its commit interval paces the stream (each flush waits for a commit),
so a poll of the checkpoint through Airflow's REST API sees it cross half-way. The example DAG
``zerobus_ingest`` runs on the same stack.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator
from tests.airflow.stack import REPO, AirflowStack, wait_for

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

RESUME_DAG = "resume_zerobus_ingest"
EXAMPLE_DAG = "zerobus_ingest"
CONN_ID = "zerobus_emulator"
SCHEMA = "id BIGINT NOT NULL, body STRING, dedupe_key STRING"
EXAMPLE_SCHEMA = "id BIGINT NOT NULL, user STRING, kind STRING, amount DOUBLE, dedupe_key STRING"
RECORDS = 2000
BATCH = 50
FLUSH_EVERY = 2  # a flush (and a checkpoint) every 100 records: 20 of them
COMMIT_INTERVAL_S = 0.25  # each flush waits for a commit: the stream takes about 5 s


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZerobusEmulator]:
    with ZerobusEmulator(tmp_path_factory.mktemp("warehouse"), commit_interval_s=COMMIT_INTERVAL_S) as emu:
        yield emu


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dags")
    (folder / "resume_zerobus.py").symlink_to(REPO / "tests" / "airflow" / "dags" / "resume_zerobus.py")
    (folder / "zerobus_ingest.py").symlink_to(REPO / "dags" / "zerobus_ingest.py")
    return folder


@pytest.fixture(scope="module")
def stack(
    emulator: ZerobusEmulator, dags_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowStack]:
    conn = {
        "conn_type": "databricks",
        "host": emulator.uc_url,
        "login": emulator.client_id,
        "password": emulator.client_secret,
        "extra": {"zerobus_endpoint": emulator.endpoint},
    }
    env = {
        "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(conn),
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn),
    }
    with AirflowStack(tmp_path_factory.mktemp("airflow-zerobus"), dags_folder, env) as airflow:
        airflow.wait_for_dag(RESUME_DAG)
        airflow.wait_for_dag(EXAMPLE_DAG)
        yield airflow


def write_source(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "body": f"record {i:06d} " + "x" * 40}) + "\n")
    return path


def test_killed_ingest_resumes_on_retry_without_loss(
    stack: AirflowStack, emulator: ZerobusEmulator, tmp_path: Path
) -> None:
    table = f"main.default.resume_{uuid.uuid4().hex[:10]}"
    emulator.create_table(table, SCHEMA)
    src = write_source(tmp_path / "events.jsonl", RECORDS)
    run_id = stack.trigger(
        RESUME_DAG,
        {"source": str(src), "table": table, "batch_records": BATCH, "flush_every_batches": FLUSH_EVERY},
    )

    def half_done() -> dict[str, Any] | None:
        cp = stack.state_store(RESUME_DAG, run_id, "ingest").get("checkpoint")
        return cp if cp is not None and cp["records_acked"] >= RECORDS // 2 else None

    at_kill = wait_for(half_done, 180, "the ingest checkpoint to reach 50%")
    assert at_kill["kind"] == "zerobus.ingest" and at_kill["records_acked"] < RECORDS
    progress = stack.xcom(RESUME_DAG, run_id, "ingest", "checkpoint")  # the UI mirror
    assert progress["kind"] == "zerobus.ingest"
    ti = stack.task_instance(RESUME_DAG, run_id, "ingest")
    os.kill(int(ti["pid"]), signal.SIGKILL)

    assert stack.wait_for_run(RESUME_DAG, run_id) == "success", stack.run_report(RESUME_DAG, run_id)
    tries = stack.tries(RESUME_DAG, run_id, "ingest")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    result = stack.xcom(RESUME_DAG, run_id, "ingest")
    # try 2 started from try 1's checkpoint (flushes acknowledged after our snapshot may be in it too)
    assert result["records_resumed"] >= at_kill["records_acked"]
    resumed_line = result["resumed_from"]["line"]
    assert resumed_line == result["records_resumed"]
    assert result["records"] == RECORDS  # earlier tries included

    rows = emulator.read_table(table)
    counts = collections.Counter(row["id"] for row in rows)
    assert set(counts) == set(range(RECORDS))  # no record lost
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    assert all(counts[i] == 2 for i in duplicated)  # one kill: at most one extra copy
    # duplicates only inside the window: what try 1 sent after the checkpoint try 2 resumed from
    window = FLUSH_EVERY * BATCH
    assert len(duplicated) <= window, duplicated
    assert all(resumed_line <= i < resumed_line + window for i in duplicated), (resumed_line, duplicated)
    # the dedupe key tells the copies of a record apart from different records, exactly
    keys = collections.defaultdict(set)
    for row in rows:
        keys[row["dedupe_key"]].add(row["id"])
    assert len(keys) == RECORDS and all(len(ids) == 1 for ids in keys.values())
    assert stack.state_store(RESUME_DAG, run_id, "ingest") == {}  # checkpoint deleted on success


def test_example_dag_ingests_the_generated_events(
    stack: AirflowStack, emulator: ZerobusEmulator, tmp_path: Path
) -> None:
    table = f"main.default.events_{uuid.uuid4().hex[:10]}"
    emulator.create_table(table, EXAMPLE_SCHEMA)
    events = 3000
    conf = {"events": events, "local_dir": str(tmp_path), "table": table, "conn_id": CONN_ID}
    run_id = stack.trigger(EXAMPLE_DAG, conf)
    assert stack.wait_for_run(EXAMPLE_DAG, run_id) == "success", stack.run_report(EXAMPLE_DAG, run_id)
    result = stack.xcom(EXAMPLE_DAG, run_id, "ingest")
    assert result["records"] == events and result["records_resumed"] == 0 and result["resumed_from"] is None
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    rows = emulator.read_table(table)
    assert sorted(row["id"] for row in rows) == list(range(events))
    by_id = {row["id"]: row for row in rows}
    for line in lines[:: events // 10]:
        event = json.loads(line)
        assert {k: by_id[event["id"]][k] for k in event} == event
    assert stack.state_store(EXAMPLE_DAG, run_id, "ingest") == {}
