"""DAG-level tests: ``airflow dags test`` against the Files API emulator, in a throwaway AIRFLOW_HOME.

Every DAG run is a module-scoped fixture (about 15 s each), shared by the tests that look at it, so the
module runs six DAG runs in all. Outputs, the metadata DB (SQLite) and the emulator's disk are then
inspected: XCom results, the task state store, task tries, log lines, and that no secret leaked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

from .conftest import AIRFLOW, EXAMPLE_DAGS, AirflowHome, DagRunOutput

pytestmark = pytest.mark.airflow

MiB = 1024 * 1024
LANDING = "/Volumes/main/default/landing"
ROUNDTRIP_VOLUME_DIR = f"{LANDING}/adt/roundtrip"
SENSOR_DROP_DIR = f"{LANDING}/adt/drop"
SENSOR_DS = "2026-01-02"  # fixed logical date, so the drop folder is known before the run
SENSOR_FILES = ("orders.csv", "customers.csv")
SENSOR_CSV = "id,value\n" + "".join(f"{i},{i * i}\n" for i in range(1000))  # what its producer writes
SOURCE_CHANGED_DEST = f"{LANDING}/adt/source_changed.bin"
BAD_CHECKPOINT_DIR = f"{LANDING}/adt/bad_checkpoint"
SOURCE_CHANGED_SIZE = 12 * MiB  # three 5 MiB-sized parts: 5 + 5 + 2
BAD_CHECKPOINT_SIZE = 6 * MiB  # two parts


# ---------------------------------------------------------------------------------------------- helpers
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def make_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def query(home: AirflowHome, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the metadata DB (read-only, so a running Airflow is never disturbed)."""
    conn = sqlite3.connect(f"file:{home.db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def xcom(home: AirflowHome, dag_id: str, task_id: str, key: str = "return_value") -> Any:
    rows = query(
        home, "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ?", dag_id, task_id, key
    )
    assert len(rows) == 1, f"expected one XCom {key!r} of {dag_id}.{task_id}, found {len(rows)}"
    return json.loads(rows[0][0])


def task_instance(home: AirflowHome, dag_id: str, task_id: str) -> dict[str, Any]:
    rows = query(
        home,
        "SELECT state, try_number, max_tries FROM task_instance WHERE dag_id = ? AND task_id = ?",
        dag_id,
        task_id,
    )
    assert len(rows) == 1, f"expected one task instance {dag_id}.{task_id}, found {len(rows)}"
    state, try_number, max_tries = rows[0]
    history = query(
        home,
        "SELECT try_number, state FROM task_instance_history WHERE dag_id = ? AND task_id = ? "
        "ORDER BY try_number",
        dag_id,
        task_id,
    )
    return {"state": state, "try_number": try_number, "max_tries": max_tries, "history": history}


def state_store(home: AirflowHome, dag_id: str, task_id: str) -> dict[str, Any]:
    rows = query(
        home, "SELECT key, value FROM task_state_store WHERE dag_id = ? AND task_id = ?", dag_id, task_id
    )
    return {key: value for key, value in rows}


def tries(run: DagRunOutput, task_id: str) -> list[str]:
    """The output of every try of ``task_id`` in a ``dags test`` run, in order (one block per try)."""
    pattern = (
        rf"\[DAG TEST\] starting task_id={re.escape(task_id)} map_index.*?"
        rf"\[DAG TEST\] end task task_id={re.escape(task_id)} map_index"
    )
    return re.findall(pattern, run.output, flags=re.S)


def describe(run: DagRunOutput) -> str:
    return (
        f"{run.dag_id}: exit {run.returncode} after {run.seconds:.0f} s; output tail:\n{run.output[-6000:]}"
    )


# ---------------------------------------------------------------------------------------------- DAG runs
@pytest.fixture(scope="module")
def roundtrip(
    adt_airflow: AirflowHome, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DagRunOutput, Path]:
    local_dir = tmp_path_factory.mktemp("roundtrip")
    conf = {
        "size_mib": 12,
        "part_size_mib": 5,
        "local_dir": str(local_dir),
        "volume_dir": ROUNDTRIP_VOLUME_DIR,
    }
    run = adt_airflow.dags_test("databricks_volume_roundtrip", conf, dags_folder=EXAMPLE_DAGS)
    return run, local_dir


@pytest.fixture(scope="module")
def sensor(
    adt_airflow: AirflowHome, adt_emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DagRunOutput, Path]:
    """The sensor example, with its drop files already in place.

    ``dags test`` runs one task at a time and runs a deferred trigger inline, blocking, with no timeout;
    it picks among ready tasks in set order. When ``wait_for_drop`` goes before ``producer`` (about half
    the runs) the trigger waits forever for files nobody will write. Seeding the same two CSVs that the
    producer writes makes the run independent of that order; the producer then overwrites them.
    """
    local_dir = tmp_path_factory.mktemp("sensor")
    csv = base64.b64encode(SENSOR_CSV.encode()).decode()
    adt_emulator.seed(
        files=[{"path": f"{SENSOR_DROP_DIR}/{SENSOR_DS}/{n}", "content_b64": csv} for n in SENSOR_FILES]
    )
    conf = {"delay_s": 1, "local_dir": str(local_dir), "drop_dir": SENSOR_DROP_DIR}
    run = adt_airflow.dags_test(
        "databricks_volume_sensor", conf, dags_folder=EXAMPLE_DAGS, logical_date=f"{SENSOR_DS}T00:00:00+00:00"
    )
    return run, local_dir


@pytest.fixture(scope="module")
def bad_input(adt_airflow: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> DagRunOutput:
    work = tmp_path_factory.mktemp("bad-input")
    make_file(work / "small.bin", MiB, seed=1)
    make_file(work / "multi.bin", 6 * MiB, seed=2)
    return adt_airflow.dags_test("adt_bad_input", {"work": str(work)})


@pytest.fixture(scope="module")
def source_changed(
    adt_airflow: AirflowHome, adt_emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DagRunOutput, Path, bytes]:
    """Part 3 fails on every attempt until the DAG's on_retry_callback grows the source and heals it."""
    source = make_file(tmp_path_factory.mktemp("source-changed") / "source.bin", SOURCE_CHANGED_SIZE, seed=3)
    original = source.read_bytes()
    adt_emulator.add_fault(
        route="presigned.part", path=SOURCE_CHANGED_DEST, part_number=3, status=500, times=None
    )
    try:
        run = adt_airflow.dags_test("adt_source_changed", {"source": str(source)})
    finally:
        adt_emulator.clear_faults()
    return run, source, original


@pytest.fixture(scope="module")
def bad_checkpoint(
    adt_airflow: AirflowHome, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DagRunOutput, Path]:
    work = tmp_path_factory.mktemp("bad-checkpoint")
    for seed, variant in enumerate(BAD_CHECKPOINTS):
        make_file(work / f"{variant}.bin", BAD_CHECKPOINT_SIZE, seed=10 + seed)
    return adt_airflow.dags_test("adt_bad_checkpoint", {"work": str(work)}), work


# ---------------------------------------------------------------------------------------------- example DAGs
def test_example_dags_import_without_errors(adt_airflow: AirflowHome) -> None:
    script = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(EXAMPLE_DAGS)!r})\n"
        "errors = {str(k): str(v) for k, v in bag.import_errors.items()}\n"
        "dump = lambda d: {k: d.params.get_param(k).dump() for k in d.params}\n"
        "params = {d.dag_id: dump(d) for d in bag.dags.values()}\n"
        "schedules = {d.dag_id: d.schedule for d in bag.dags.values()}\n"
        "print('DAGBAG ' + json.dumps({'dags': sorted(bag.dag_ids), 'errors': errors, "
        "'params': params, 'schedules': schedules}, default=str))\n"
    )
    env = {**adt_airflow.env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)}
    python = str(Path(AIRFLOW).with_name("python"))
    proc = subprocess.run(
        [python, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DAGBAG ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    bag = json.loads(lines[-1][len("DAGBAG ") :])
    assert bag["errors"] == {}
    example_files = sorted(p.name for p in EXAMPLE_DAGS.glob("*.py"))
    assert example_files == [
        "azure_blob_volume.py",
        "databricks_volume_roundtrip.py",
        "databricks_volume_sensor.py",
        "databricks_volume_sync.py",
        "zerobus_ingest.py",
    ]
    assert bag["dags"] == [
        "azure_blob_volume_roundtrip",
        "databricks_volume_roundtrip",
        "databricks_volume_roundtrip_daily",
        "databricks_volume_sensor",
        "databricks_volume_sync",
        "databricks_volume_sync_fanout",
        "zerobus_ingest",
    ]
    # the ones people trigger by hand have no schedule (unpausing them starts no run); two are scheduled
    assert bag["schedules"] == {
        "azure_blob_volume_roundtrip": None,
        "databricks_volume_roundtrip": None,
        "databricks_volume_roundtrip_daily": "@daily",
        "databricks_volume_sensor": None,
        "databricks_volume_sync": "@hourly",
        "databricks_volume_sync_fanout": None,
        "zerobus_ingest": None,
    }
    # the trigger form shows each Param's title and description, and marks required what has no null
    for dag_id, params in bag["params"].items():
        for name, param in params.items():
            schema = param["schema"]
            assert schema.get("title") and param.get("description"), (dag_id, name)
    roundtrip = bag["params"]["databricks_volume_roundtrip"]
    optional = {name for name, p in roundtrip.items() if "null" in p["schema"]["type"]}
    assert optional == {"part_size_mib", "bandwidth_limit_mib_s"}


def test_roundtrip_example_dag(
    roundtrip: tuple[DagRunOutput, Path], adt_airflow: AirflowHome, adt_emulator: FilesApiEmulator
) -> None:
    run, local_dir = roundtrip
    assert run.succeeded, describe(run)
    dag_id = "databricks_volume_roundtrip"
    source = local_dir / "source.bin"
    assert source.stat().st_size == 12 * MiB
    local_sha = sha256_file(source)

    up = xcom(adt_airflow, dag_id, "upload")
    down = xcom(adt_airflow, dag_id, "download")
    summary = xcom(adt_airflow, dag_id, "verify")
    assert up["bytes"] == 12 * MiB
    assert up["source"] == str(source)
    assert up["parts_resumed"] == 0 and up["restarted_reason"] is None
    assert up["sha256"] == local_sha == down["sha256"] == summary["sha256"]
    assert down["bytes"] == 12 * MiB
    assert sha256_file(local_dir / "roundtrip.bin") == local_sha

    remote = adt_emulator.local_path(up["destination"])
    assert up["destination"].startswith(f"{ROUNDTRIP_VOLUME_DIR}/")
    assert remote.read_bytes() == source.read_bytes()
    for task_id in ("make_source", "upload", "download", "verify"):
        assert task_instance(adt_airflow, dag_id, task_id)["state"] == "success"
    # a finished transfer leaves no checkpoint behind (a later Clear must start from scratch)
    assert state_store(adt_airflow, dag_id, "upload") == {}
    assert state_store(adt_airflow, dag_id, "download") == {}


def test_roundtrip_example_dag_uploads_in_parts_of_part_size_mib(
    roundtrip: tuple[DagRunOutput, Path], adt_airflow: AirflowHome
) -> None:
    run, _ = roundtrip
    assert run.succeeded, describe(run)
    up = xcom(adt_airflow, "databricks_volume_roundtrip", "upload")
    assert (up["mode"], up["parts"]) == ("multipart", 3)


def test_sensor_example_dag(sensor: tuple[DagRunOutput, Path], adt_airflow: AirflowHome) -> None:
    run, local_dir = sensor
    assert run.succeeded, describe(run)
    dag_id = "databricks_volume_sensor"
    matches = xcom(adt_airflow, dag_id, "wait_for_drop")
    assert sorted(matches) == [f"{SENSOR_DROP_DIR}/{SENSOR_DS}/{n}" for n in sorted(SENSOR_FILES)]
    assert set(matches.values()) == {len(SENSOR_CSV)}
    assert (local_dir / "customers.csv").read_text() == SENSOR_CSV  # the producer ran
    fetched = local_dir / "first_match.csv"  # "customers.csv" sorts first
    assert fetched.is_file()
    assert fetched.read_text() == SENSOR_CSV
    assert xcom(adt_airflow, dag_id, "fetch_first_match")["sha256"] == sha256_file(fetched)
    for task_id in ("producer", "wait_for_drop", "fetch_first_match"):
        assert task_instance(adt_airflow, dag_id, task_id)["state"] == "success"


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_connection_fails_with_clear_message(
    bad_input: DagRunOutput, adt_airflow: AirflowHome
) -> None:
    assert not bad_input.succeeded
    assert "state=failed" in bad_input.output, describe(bad_input)
    ti = task_instance(adt_airflow, "adt_bad_input", "missing_conn")
    assert ti["state"] == "failed"
    [log] = tries(bad_input, "missing_conn")
    assert "The conn_id `no_such_conn` isn't defined" in log


@pytest.mark.parametrize("task_id", ["missing_volume_single", "missing_volume_multipart"])
def test_missing_volume_fails_on_first_try_without_retrying(
    bad_input: DagRunOutput, adt_airflow: AirflowHome, task_id: str
) -> None:
    ti = task_instance(adt_airflow, "adt_bad_input", task_id)
    assert ti["state"] == "failed"
    assert ti["max_tries"] == 2  # retries=2 was available ...
    assert ti["try_number"] == 1 and ti["history"] == []  # ... and not one was spent
    logs = tries(bad_input, task_id)
    assert len(logs) == 1, describe(bad_input)
    assert "AirflowFailException: RemoteNotFoundError" in logs[0]
    assert "Volume 'main.default.no_such_volume' does not exist" in logs[0]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_source_changed_between_tries_restarts_clean(
    source_changed: tuple[DagRunOutput, Path, bytes], adt_airflow: AirflowHome, adt_emulator: FilesApiEmulator
) -> None:
    run, source, original = source_changed
    assert run.succeeded, describe(run)
    modified = source.read_bytes()
    assert len(modified) > len(original) and modified.startswith(original)  # the callback ran

    ti = task_instance(adt_airflow, "adt_source_changed", "upload")
    assert ti["state"] == "success" and ti["try_number"] == 2
    assert ti["history"] == [(1, "failed")]

    first, second = tries(run, "upload")
    assert "RetryBudgetExceeded" in first and "ADT-TEST on_retry_callback" in first
    assert "Not resuming" not in first
    assert "Found a checkpoint: 2 of 3 parts already uploaded by an earlier try" in second
    warning = (
        f"Not resuming {SOURCE_CHANGED_DEST}: "
        f"source size changed ({len(original)} -> {len(modified)} bytes). Starting a clean upload."
    )
    assert warning in second

    result = xcom(adt_airflow, "adt_source_changed", "upload")
    assert result["bytes"] == len(modified)
    assert result["mode"] == "multipart" and result["parts"] == 3 and result["parts_resumed"] == 0
    assert result["restarted_reason"].startswith("source size changed")
    assert result["sha256"] == hashlib.sha256(modified).hexdigest()
    assert adt_emulator.local_path(SOURCE_CHANGED_DEST).read_bytes() == modified
    assert state_store(adt_airflow, "adt_source_changed", "upload") == {}
    # try 1 really stopped at the injected fault
    failed = [r for r in adt_emulator.requests("presigned.part") if r.fault and r.path == SOURCE_CHANGED_DEST]
    assert {r.part_number for r in failed} == {3} and len(failed) == 2


IGNORED = "Ignoring the stored checkpoint ("
BAD_CHECKPOINTS = {  # variant -> what the log must say about the planted checkpoint
    "garbage": f"{IGNORED}not a checkpoint of this package (schema 'x'))",
    "not_an_object": f"{IGNORED}checkpoint is not a JSON object)",
    "missing_segment": f"{IGNORED}a checkpoint segment is missing)",
    "future_version": f"{IGNORED}checkpoint schema version 99 is newer than this package",
    "download": f"{IGNORED}checkpoint is a 'files_api.download', expected 'files_api.upload')",
    "other_destination": (
        f"Not resuming {BAD_CHECKPOINT_DIR}/other_destination.bin: checkpoint is for "
        f"{BAD_CHECKPOINT_DIR}/someone_else.bin, not {BAD_CHECKPOINT_DIR}/other_destination.bin. "
        "Starting a clean upload."
    ),
}


@pytest.mark.parametrize("variant", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_ignored_with_a_reason(
    bad_checkpoint: tuple[DagRunOutput, Path],
    adt_airflow: AirflowHome,
    adt_emulator: FilesApiEmulator,
    variant: str,
) -> None:
    run, work = bad_checkpoint
    ti = task_instance(adt_airflow, "adt_bad_checkpoint", variant)
    assert ti["state"] == "success" and ti["try_number"] == 1, describe(run)
    [log] = tries(run, variant)
    assert f"ADT-TEST planted a {variant} checkpoint" in log
    assert BAD_CHECKPOINTS[variant] in log
    result = xcom(adt_airflow, "adt_bad_checkpoint", variant)
    source = work / f"{variant}.bin"
    assert result["bytes"] == BAD_CHECKPOINT_SIZE and result["parts_resumed"] == 0
    assert result["mode"] == "multipart" and result["parts"] == 2
    assert result["sha256"] == sha256_file(source)
    assert adt_emulator.local_path(f"{BAD_CHECKPOINT_DIR}/{variant}.bin").read_bytes() == source.read_bytes()
    assert state_store(adt_airflow, "adt_bad_checkpoint", variant) == {}  # nothing planted is left over


# ---------------------------------------------------------------------------------------------- secrets
def test_no_secret_in_output_logs_xcom_or_state_store(
    adt_airflow: AirflowHome,
    adt_emulator: FilesApiEmulator,
    roundtrip: tuple[DagRunOutput, Path],
    sensor: tuple[DagRunOutput, Path],
    bad_input: DagRunOutput,
    source_changed: tuple[DagRunOutput, Path, bytes],
    bad_checkpoint: tuple[DagRunOutput, Path],
) -> None:
    needles = [adt_emulator.token, "X-Emu-Signature", "/_presigned/", "Bearer"]
    # the runs did use presigned URLs (so they had signatures to leak) and the token (to leak)
    assert adt_emulator.requests("presigned.part") and adt_emulator.requests("presigned.download")
    assert len(adt_emulator.token) >= 32

    places: dict[str, str] = {f"dags test {run.dag_id}": run.output for run in adt_airflow.runs}
    assert len(places) >= 5
    logs = adt_airflow.home / "logs"
    if logs.is_dir():
        for path in logs.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_text(errors="replace")
    for table in ("xcom", "task_state_store", "rendered_task_instance_fields"):
        for i, row in enumerate(query(adt_airflow, f"SELECT * FROM {table}")):
            places[f"{table} row {i}"] = repr(row)

    leaks = [(where, needle) for where, text in places.items() for needle in needles if needle in text]
    assert leaks == []

    mirrors = [
        json.loads(v) for (v,) in query(adt_airflow, "SELECT value FROM xcom WHERE key = 'checkpoint'")
    ]
    # finished transfers show "done"; the failed try's progress had been mirrored before the retry wiped it
    assert any(m.get("kind") == "files_api.upload" and m.get("phase") == "done" for m in mirrors)
    for mirror in mirrors:
        assert "session_token" not in mirror
