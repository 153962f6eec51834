"""ZerobusIngestOperator outside a scheduler, against the Zerobus emulator (and the Files emulator for a
Volume source): the checkpoint lifecycle in the task state store, a try killed mid-stream and resumed
(every record at least once, duplicates only inside the documented window, the dedupe key exact), bad input
(file and line, or a dead-letter file), and errors no retry can fix failing the task at once."""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from google.protobuf import descriptor_pb2

from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from airflow_databricks_transfer.operators.zerobus import ZerobusIngestOperator
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator
from tests.integration.conftest import DictStore, context

pytestmark = pytest.mark.integration

SCHEMA = "id BIGINT NOT NULL, body STRING, dedupe_key STRING"
_names = itertools.count(1)
FAST: dict[str, Any] = {
    "recovery_backoff_ms": 100,
    "recovery_timeout_ms": 3000,
    "flush_timeout_ms": 20_000,
    "ingest_retry": RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1),
}


class RecordingTi:
    """Stands in for the task instance: records the XCom mirror of the checkpoint."""

    def __init__(self) -> None:
        self.pushed: list[dict[str, Any]] = []
        self.dag_id, self.task_id, self.run_id, self.map_index = "d", "ingest", f"r{os.getpid()}", -1

    def xcom_push(self, key: str, value: dict[str, Any]) -> None:
        self.pushed.append({"key": key, **value})


@pytest.fixture
def zb_conn(zerobus_emulator: ZerobusEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A ``databricks`` connection to the emulator: OAuth client credentials, extra zerobus_endpoint."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    emu = zerobus_emulator
    conn = {
        "conn_type": "databricks",
        "host": emu.uc_url,
        "login": emu.client_id,
        "password": emu.client_secret,
        "extra": {"zerobus_endpoint": emu.endpoint},
    }
    monkeypatch.setenv("AIRFLOW_CONN_ZB_OP_TEST", json.dumps(conn))
    bad = {**conn, "password": "not-the-secret"}
    monkeypatch.setenv("AIRFLOW_CONN_ZB_OP_BAD", json.dumps(bad))
    return "zb_op_test"


def new_table(emu: ZerobusEmulator, schema: str = SCHEMA) -> str:
    name = f"main.default.op{os.getpid()}_{next(_names)}"
    emu.create_table(name, schema)
    return name


def jsonl(path: Path, n: int, *, start: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"id": i, "body": f"record {i}"}) + "\n")
    return path


def id_counts(emu: ZerobusEmulator, table: str) -> collections.Counter[int]:
    return collections.Counter(row["id"] for row in emu.read_table(table))


def test_a_file_lands_once_and_the_checkpoint_goes_on_success(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    table = new_table(zerobus_emulator)
    src = jsonl(tmp_path / "events.jsonl", 700)
    op = ZerobusIngestOperator(
        task_id="ingest",
        databricks_conn_id=zb_conn,
        source_path="{{ params.src }}",
        table_name="{{ params.table }}",
        batch_records="{{ params.batch }}",
        flush_every_batches=2,
        dedupe_key="dedupe_key",
        **FAST,
    )
    op.render_template_fields({"params": {"src": str(src), "table": table, "batch": "100"}})
    store, ti = DictStore(), RecordingTi()
    result = op.execute(context(task_state_store=store, ti=ti))
    assert (result["records"], result["batches"], result["records_resumed"]) == (700, 7, 0)
    assert result["resumed_from"] is None and result["table"] == table
    assert id_counts(zerobus_emulator, table) == collections.Counter(range(700))
    assert store.data == {}  # deleted on success: a Clear must start over
    checkpoints = [p for p in ti.pushed if p["key"] == "checkpoint"]
    assert checkpoints[-1]["phase"] == "done"
    assert any(p.get("records_acked") for p in checkpoints[:-1])  # progress reached the UI mid-way
    assert zerobus_emulator.client_secret not in json.dumps([*ti.pushed, result])


class KillingStore(DictStore):
    """The state store, with on_kill fired once a checkpoint says ``at`` records are acknowledged (the
    moment a SIGTERM would land), so the kill is placed by an event, not by a clock."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.op: ZerobusIngestOperator | None = None
        self.killed_at: dict[str, Any] | None = None

    def set(self, key: str, value: Any, **kw: Any) -> None:
        super().set(key, value, **kw)
        acked = value.get("records_acked", 0) if isinstance(value, dict) else 0
        if self.op is not None and self.killed_at is None and acked >= self.at:
            self.killed_at = self.data[key]
            threading.Thread(target=self.op.on_kill).start()  # as the signal handler would, from outside


def test_a_try_killed_mid_stream_resumes_without_loss_and_duplicates_stay_in_the_window(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    n, batch, every = 3000, 50, 2
    table = new_table(zerobus_emulator)
    src = jsonl(tmp_path / "events.jsonl", n)
    zerobus_emulator.update_settings(commit_interval_s=0.02)  # each flush waits for a commit: a paced stream

    def operator() -> ZerobusIngestOperator:
        return ZerobusIngestOperator(
            task_id="ingest",
            databricks_conn_id=zb_conn,
            source_path=str(src),
            table_name=table,
            batch_records=batch,
            flush_every_batches=every,
            flush_interval_s=0,
            dedupe_key="dedupe_key",
            **FAST,
        )

    store = KillingStore(at=n // 3)
    first = store.op = operator()
    with pytest.raises(Exception) as killed:  # the engine's cancellation, whatever its type
        first.execute(context(task_state_store=store, ti=None))
    assert not isinstance(killed.value, AirflowFailException)  # a retry must be allowed
    assert store.killed_at is not None and 0 < store.killed_at["records_acked"] < n
    left = store.data["checkpoint"]
    assert left["records_acked"] >= store.killed_at["records_acked"]  # the checkpoint survives the kill

    store.op = None
    result = operator().execute(context(task_state_store=store, ti=None))
    assert result["records_resumed"] == left["records_acked"]
    assert result["resumed_from"] == left["position"]
    assert result["records"] == n and result["records_sent"] >= n - result["records_resumed"]
    assert store.data == {}

    counts = id_counts(zerobus_emulator, table)
    assert set(counts) == set(range(n))  # no record lost
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    window = every * batch
    resumed = left["position"]["line"]
    assert len(duplicated) <= window and all(resumed <= i < resumed + window for i in duplicated)
    assert all(counts[i] <= 2 for i in duplicated)
    keys: dict[str, set[int]] = collections.defaultdict(set)
    for row in zerobus_emulator.read_table(table):
        keys[row["dedupe_key"]].add(row["id"])
    assert len(keys) == n and all(len(ids) == 1 for ids in keys.values())  # exact de-duplication


def test_a_dropped_stream_is_recovered_and_only_unacknowledged_records_come_twice(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    n, batch, every = 1000, 100, 2
    table = new_table(zerobus_emulator)
    # the 4th request is committed, then its connection is reset before the ack: the SDK resends it
    zerobus_emulator.add_fault(route="zerobus.ingest", path=table, nth=4, drop=True, phase="after")
    op = ZerobusIngestOperator(
        task_id="ingest",
        databricks_conn_id=zb_conn,
        source_path=str(jsonl(tmp_path / "e.jsonl", n)),
        table_name=table,
        batch_records=batch,
        flush_every_batches=every,
        dedupe_key="dedupe_key",
        **FAST,
    )
    result = op.execute(context(task_state_store=DictStore(), ti=None))
    assert result["records"] == n
    counts = id_counts(zerobus_emulator, table)
    assert set(counts) == set(range(n))
    duplicated = [i for i, c in counts.items() if c > 1]
    assert 0 < len(duplicated) <= every * batch  # the fault made one on purpose; the window bounds them
    assert zerobus_emulator.stats()["connections_dropped"] == 1


def test_a_malformed_line_fails_with_file_and_line_or_goes_to_the_dead_letter_file(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    table = new_table(zerobus_emulator)
    src = jsonl(tmp_path / "bad.jsonl", 20)
    lines = src.read_text().splitlines()
    lines[11] = '{"id": 11, "body": "cut'
    src.write_text("\n".join(lines) + "\n")
    common: dict[str, Any] = {"task_id": "ingest", "databricks_conn_id": zb_conn, "table_name": table, **FAST}
    strict = ZerobusIngestOperator(source_path=str(src), batch_records=5, **common)
    with pytest.raises(AirflowFailException, match=r"bad\.jsonl.*\b12\b"):
        strict.execute(context(task_state_store=DictStore(), ti=None))

    dead = tmp_path / "dead.jsonl"
    lenient = ZerobusIngestOperator(
        source_path=str(src), batch_records=5, dead_letter_path=str(dead), **common
    )
    result = lenient.execute(context(task_state_store=DictStore(), ti=None))
    assert result["dead_lettered"] == 1
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["line"] == 12 and letter["raw"] == lines[11] and "bad.jsonl" in letter["source"]
    assert set(id_counts(zerobus_emulator, table)) == set(range(20)) - {11}


def test_errors_no_retry_can_fix_fail_the_task_at_once(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    src = str(jsonl(tmp_path / "e.jsonl", 10))
    common: dict[str, Any] = {"task_id": "ingest", "source_path": src, **FAST}

    mismatch = ZerobusIngestOperator(
        records=[{"id": 1, "no_such_column": "x"}], task_id="ingest", table_name=table,
        databricks_conn_id=zb_conn, **FAST,
    )  # fmt: skip
    with pytest.raises(AirflowFailException, match=r"InvalidRequestError.*no_such_column"):
        mismatch.execute(context(task_state_store=DictStore(), ti=None))

    streams_refused = emu.stats().get("streams_refused", 0)
    missing = ZerobusIngestOperator(
        table_name="main.default.nothing_here", databricks_conn_id=zb_conn, **common
    )
    with pytest.raises(AirflowFailException, match=r"RemoteNotFoundError.*nothing_here"):
        missing.execute(context(task_state_store=DictStore(), ti=None))
    assert emu.stats()["streams_refused"] - streams_refused == 1  # refused once, not retried

    refused_before = emu.stats().get("tokens_refused", 0)
    bad = ZerobusIngestOperator(table_name=table, databricks_conn_id="zb_op_bad", **common)
    with pytest.raises(AirflowFailException, match=r"AuthError"):
        bad.execute(context(task_state_store=DictStore(), ti=None))
    assert emu.stats()["tokens_refused"] - refused_before == 1
    assert emu.client_secret not in json.dumps(emu.stats())


def test_records_from_xcom_a_callable_and_as_protobuf(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    table = new_table(zerobus_emulator, "id BIGINT NOT NULL, body STRING")
    rendered = ZerobusIngestOperator(
        task_id="from_xcom",
        databricks_conn_id=zb_conn,
        table_name=table,
        records="{{ params.rows | tojson }}",
        **FAST,
    )
    rendered.render_template_fields({"params": {"rows": [{"id": i, "body": "x"} for i in range(5)]}})
    assert rendered.execute(context(task_state_store=DictStore(), ti=None))["records"] == 5

    from_callable = ZerobusIngestOperator(
        task_id="from_callable",
        databricks_conn_id=zb_conn,
        table_name=table,
        records_callable=lambda ctx: ({"id": i, "body": "y"} for i in range(5, 9)),
        **FAST,
    )
    assert from_callable.execute(context(task_state_store=DictStore(), ti=None))["records"] == 4

    # a protoc --descriptor_set_out file, built here with descriptor_pb2
    row = descriptor_pb2.DescriptorProto(name="Row")
    row.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED)  # fmt: skip
    row.field.add(name="body", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)  # fmt: skip
    file = descriptor_pb2.FileDescriptorProto(name="rows.proto", package="demo", syntax="proto2")
    file.message_type.append(row)
    desc = tmp_path / "rows.desc"
    desc.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    as_proto = ZerobusIngestOperator(
        task_id="proto",
        databricks_conn_id=zb_conn,
        table_name=table,
        source_path=str(jsonl(tmp_path / "p.jsonl", 6, start=9)),
        record_type="proto",
        proto_message=f"{desc}:demo.Row",
        **FAST,
    )
    assert as_proto.execute(context(task_state_store=DictStore(), ti=None))["records"] == 6
    rows = zerobus_emulator.read_table(table)
    assert sorted(r["id"] for r in rows) == list(range(15))
    assert {r["body"] for r in rows if r["id"] >= 9} == {f"record {i}" for i in range(9, 15)}


def test_a_volume_file_is_fetched_then_ingested(
    zerobus_emulator: ZerobusEmulator,
    zb_conn: str,
    conn: str,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
) -> None:
    table = new_table(zerobus_emulator)
    volume_path = "/Volumes/main/default/landing/in/events.csv"
    src = tmp_path / "events.csv"
    src.write_text("id,body\n" + "".join(f"{i},row {i}\n" for i in range(40)))
    DatabricksFilesHook(conn).upload_file(str(src), volume_path)
    op = ZerobusIngestOperator(
        task_id="ingest",
        databricks_conn_id=zb_conn,
        volume_conn_id=conn,
        source_path=volume_path,
        table_name=table,
        csv_types={"id": "int"},
        batch_records=16,
        **FAST,
    )
    store, ti = DictStore(), RecordingTi()
    result = op.execute(context(task_state_store=store, ti=ti))
    assert result["records"] == 40 and volume_path in json.dumps(result["source"])
    rows = zerobus_emulator.read_table(table)
    assert sorted((r["id"], r["body"]) for r in rows) == [(i, f"row {i}") for i in range(40)]
    assert store.data == {}
