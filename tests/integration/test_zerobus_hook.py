"""ZerobusHook through a real Airflow ``databricks`` connection (AIRFLOW_CONN_* JSON) and the official SDK,
against the Zerobus emulator over real sockets; rows read back from the Delta table with ``deltalake``."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from google.protobuf import descriptor_pb2

from airflow_databricks_transfer.clients.zerobus import StreamOptions, message_class, proto_converter
from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint
from airflow_databricks_transfer.engine.errors import (
    AuthError,
    ConnectionLostError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from airflow_databricks_transfer.engine.ingest import IngestOptions, JsonLinesReader, RecordsReader
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.hooks.zerobus import ZerobusHook
from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator

pytestmark = pytest.mark.integration

SCHEMA = "id BIGINT NOT NULL, body STRING"
# short SDK timeouts: a path that should fail fails in seconds, not the SDK's minutes
FAST = StreamOptions(recovery_backoff_ms=100, recovery_timeout_ms=5000, flush_timeout_ms=20_000)
_names = itertools.count(1)


def new_table(emu: ZerobusEmulator, schema: str = SCHEMA) -> str:
    name = f"main.default.hook{os.getpid()}_{next(_names)}"
    emu.create_table(name, schema)
    return name


def ids(emu: ZerobusEmulator, table: str) -> list[int]:
    return sorted(row["id"] for row in emu.read_table(table))


@pytest.fixture
def conn_id(zerobus_emulator: ZerobusEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A ``databricks`` connection to the emulator with OAuth M2M: the SDK mints tokens from its Host."""
    return add_connection(monkeypatch, tmp_path, "zb_emu", zerobus_emulator, zerobus_emulator.client_secret)


def add_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conn_id: str, emu: ZerobusEmulator, secret: str
) -> str:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    conn = {
        "conn_type": "databricks",
        "host": emu.uc_url,
        "login": emu.client_id,
        "password": secret,
        "extra": {"zerobus_endpoint": emu.endpoint},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def row_descriptor(package: str) -> bytes:
    """The table's row as a protobuf schema built at test time (a serialized FileDescriptorProto)."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    fd = descriptor_pb2.FieldDescriptorProto
    row = file.message_type.add(name="Row")
    row.field.add(name="id", number=1, type=fd.TYPE_INT64, label=fd.LABEL_REQUIRED)
    row.field.add(name="body", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    return bytes(file.SerializeToString())


def test_json_batches_over_oauth_from_the_airflow_connection(
    zerobus_emulator: ZerobusEmulator,
    conn_id: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    hook = ZerobusHook(conn_id, stream_options=FAST)
    with caplog.at_level(logging.DEBUG):
        sink = hook.open_sink(table)
        sink.send([{"id": i, "body": f"r{i}"} for i in range(3)])
        sink.send([json.dumps({"id": i}) for i in range(3, 5)])  # JSON text works as well as dicts
        sink.flush()
        assert ids(emu, table) == [0, 1, 2, 3, 4]  # flushed = durable in the table
        sink.send([{"id": 5}])
        sink.close()
        sink.close()  # idempotent
    assert ids(emu, table) == [0, 1, 2, 3, 4, 5]
    rows = sorted(
        DeltaTable(str(emu.table_path(table))).to_pyarrow_table().to_pylist(), key=lambda r: r["id"]
    )
    assert rows[0] == {"id": 0, "body": "r0"} and rows[3] == {"id": 3, "body": None}
    [entry] = emu.streams(table)
    assert (entry.status, entry.record_type, entry.records) == ("OK", "JSON", 6)
    assert emu.stats()["tokens_issued"] == 1  # OAuth through the workspace URL's token endpoint
    with pytest.raises(InvalidRequestError, match="closed"):
        sink.send([{"id": 6}])

    # the secret reaches neither our logs (Airflow's structlog writes the hook's lines to the process's
    # streams), nor the SDK's (Rust tracing), nor any repr
    secret = emu.client_secret
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "Zerobus: OAuth M2M to " + emu.endpoint in logs and "minted Zerobus token" in logs
    for text in (logs, repr(hook.connection_spec), repr(hook.client)):
        assert secret not in text
    assert secret not in repr(vars(hook)) and secret not in repr(sink)


def test_protobuf_with_a_descriptor_and_a_headers_provider(
    zerobus_emulator: ZerobusEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    # a connection with no credentials at all: the headers provider is the auth
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_ZB_HEADERS",
        json.dumps({"conn_type": "databricks", "extra": {"zerobus_endpoint": emu.endpoint}}),
    )
    asked: list[str] = []

    def headers(for_table: str) -> dict[str, str]:
        asked.append(for_table)
        return {"authorization": f"Bearer {emu.token}"}  # the table header is added for us

    descriptor = row_descriptor("hooktest")
    hook = ZerobusHook("zb_headers", headers_provider=headers, stream_options=FAST)
    convert = proto_converter(descriptor)
    sink = hook.open_sink(table, "proto", descriptor)
    sink.send([convert({"id": 1, "body": "p1"}), convert({"id": 2})])
    sink.send([message_class(descriptor)(id=3, body="p3")])  # messages are taken too
    sink.close()
    assert sorted(emu.read_table(table), key=lambda r: r["id"]) == [
        {"id": 1, "body": "p1"},
        {"id": 2, "body": None},
        {"id": 3, "body": "p3"},
    ]
    [entry] = emu.streams(table)
    assert (entry.status, entry.record_type, entry.records) == ("OK", "PROTO", 3)
    assert asked == [table] and emu.stats().get("tokens_issued", 0) == 0
    assert hook.client.auth_mode == "headers provider"


def test_bad_secret_is_an_auth_error_at_once(
    zerobus_emulator: ZerobusEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    conn_id = add_connection(monkeypatch, tmp_path, "zb_bad", emu, "not-the-secret-42")
    # long backoffs: a retry of the refusal would show as seconds, and as a second token request
    hook = ZerobusHook(conn_id, stream_options=StreamOptions(recovery_backoff_ms=30_000))
    with pytest.raises(AuthError, match="invalid_client") as info:
        hook.open_sink(table)
    assert "not-the-secret-42" not in str(info.value)
    assert emu.stats()["tokens_refused"] == 1 and emu.streams() == []


def test_missing_table_is_not_found_without_retries(zerobus_emulator: ZerobusEmulator, conn_id: str) -> None:
    emu = zerobus_emulator
    hook = ZerobusHook(conn_id, stream_options=StreamOptions(recovery_backoff_ms=30_000))
    with pytest.raises(RemoteNotFoundError, match=r"main\.default\.absent.*does not exist"):
        hook.open_sink("main.default.absent")
    assert emu.stats()["streams_refused"] == 1


def test_schema_mismatch_is_an_invalid_request_with_the_servers_reason(
    zerobus_emulator: ZerobusEmulator, conn_id: str
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    hook = ZerobusHook(conn_id, stream_options=FAST)
    sink = hook.open_sink(table)
    sink.send([{"id": 1}])
    sink.flush()
    sink.send([{"id": 2, "colour": "red"}])
    with pytest.raises(InvalidRequestError, match="'colour' is not a column") as first:
        sink.flush()
    # the SDK answers later calls with a retryable "Stream is closed"; the sink keeps the real cause
    with pytest.raises(InvalidRequestError) as again:
        sink.send([{"id": 3}])
    assert again.value is first.value
    sink.close()
    assert ids(emu, table) == [1]
    assert len(emu.streams(table)) == 1  # no recovery attempt

    # a protobuf schema that does not fit is refused when the stream opens
    wrong = descriptor_pb2.FileDescriptorProto(name="wrong.proto", package="wrong", syntax="proto2")
    wrong.message_type.add(name="Row").field.add(
        name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    )
    with pytest.raises(InvalidRequestError, match="FIELD_COUNT_MISMATCH"):
        hook.open_sink(table, "proto", wrong.SerializeToString())


def test_a_stream_that_breaks_is_retryable_and_the_sdk_recovery_resends(
    zerobus_emulator: ZerobusEmulator, conn_id: str
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    hook = ZerobusHook(conn_id)
    # SDK recovery off: the drop reaches the engine as a retryable error (the Ingester then reopens)
    sink = hook.open_sink(table, options=StreamOptions(recovery=False, flush_timeout_ms=20_000))
    emu.add_fault(route="zerobus.ingest", path=table, nth=2, drop=True)
    sink.send([{"id": 1}])
    sink.flush()
    sink.send([{"id": 2}])
    with pytest.raises(ConnectionLostError):
        sink.flush()
    sink.close()
    assert ids(emu, table) == [1]

    # SDK recovery on (the default): the same drop is healed inside the stream, nothing lost
    emu.add_fault(route="zerobus.ingest", path=table, nth=2, drop=True)
    sink = hook.open_sink(table, options=FAST)
    started = time.monotonic()
    for i in (10, 11, 12):
        sink.send([{"id": i}])
        sink.flush()
    sink.close()
    assert ids(emu, table) == [1, 10, 11, 12]
    assert time.monotonic() - started < FAST.flush_timeout_ms / 1000  # healed, not timed out


# ------------------------------------------------------------------------- the Ingester through the hook
class Checkpoints:
    """An in-memory checkpoint sink: every save, and whether the finished ingest cleared it."""

    def __init__(self) -> None:
        self.saved: list[IngestCheckpoint] = []
        self.cleared = False

    def save(self, checkpoint: IngestCheckpoint, changed: frozenset[int]) -> None:
        self.saved.append(checkpoint)

    def clear(self) -> None:
        self.cleared = True


FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2)


def jsonl(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"id": i, "body": f"line {i}"}) + "\n")
    return path


def test_ingest_reopens_a_dropped_stream_and_every_record_lands(
    zerobus_emulator: ZerobusEmulator, conn_id: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    source = jsonl(tmp_path / "events.jsonl", 300)
    # SDK recovery off: the drop reaches the Ingester, which opens a new stream and rewinds the reader
    hook = ZerobusHook(conn_id, stream_options=StreamOptions(recovery=False, flush_timeout_ms=20_000))
    fault = emu.add_fault(route="zerobus.ingest", path=table, nth=6, drop=True)
    checkpoints = Checkpoints()
    options = IngestOptions(batch_records=20, flush_every_batches=2, retry=FAST_RETRY, progress_interval_s=0)
    result = hook.ingest(JsonLinesReader(source), table, options=options, sink=checkpoints)

    landed = ids(emu, table)
    assert set(landed) == set(range(300))  # no record lost
    duplicates = len(landed) - 300
    assert duplicates <= result.resent_records <= result.duplicates_window_records <= 2 * 20
    assert (result.records, result.retries, result.resumed_from) == (300, 1, None)
    assert result.resent_records > 0  # the batches in flight at the drop went out again
    streams = emu.streams(table)
    assert [s.status for s in streams] == ["DROPPED", "OK"] and fault.id in streams[0].faults
    # checkpoints only after acknowledged flushes: positions are line counts of whole flushes, growing
    lines = [c.position["line"] for c in checkpoints.saved]
    assert lines == sorted(lines) and all(n % 40 == 0 or n == 300 for n in lines) and lines[-1] == 300
    assert checkpoints.cleared
    # the final progress line in the (structlog) task log
    assert "100.0% (300 records acknowledged" in capfd.readouterr().out


def test_ingest_protobuf_records_converted_from_dicts(
    zerobus_emulator: ZerobusEmulator, conn_id: str
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    hook = ZerobusHook(conn_id, stream_options=FAST)
    records = [{"id": i, "body": None if i % 2 else f"p{i}"} for i in range(25)]
    result = hook.ingest(
        RecordsReader(records),
        table,
        options=IngestOptions(batch_records=10, retry=FAST_RETRY),
        record_type="proto",
        descriptor=row_descriptor("ingesttest"),
    )
    assert result.records == 25 and result.batches == 3
    assert sorted(emu.read_table(table), key=lambda r: r["id"]) == records
    [entry] = emu.streams(table)
    assert (entry.status, entry.record_type) == ("OK", "PROTO")


def test_ingest_stops_at_once_on_a_schema_mismatch(
    zerobus_emulator: ZerobusEmulator, conn_id: str, tmp_path: Path
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    source = tmp_path / "bad.jsonl"
    source.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "colour": "red"}\n{"id": 4}\n')
    hook = ZerobusHook(conn_id, stream_options=FAST)
    checkpoints = Checkpoints()
    with pytest.raises(InvalidRequestError, match="'colour' is not a column"):
        hook.ingest(
            JsonLinesReader(source),
            table,
            options=IngestOptions(batch_records=2, flush_every_batches=1, retry=FAST_RETRY),
            sink=checkpoints,
        )
    assert ids(emu, table) == [1, 2]
    assert len(emu.streams(table)) == 1  # never retried
    assert checkpoints.saved[-1].position["line"] == 2 and not checkpoints.cleared  # the acked part stays


def test_a_cancelled_hook_does_not_stream(
    zerobus_emulator: ZerobusEmulator, conn_id: str, tmp_path: Path
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    hook = ZerobusHook(conn_id, stream_options=FAST)
    hook.cancel()  # on_kill landing before the ingest starts is not lost
    with pytest.raises(Cancelled):
        hook.ingest(JsonLinesReader(jsonl(tmp_path / "e.jsonl", 10)), table)
    assert emu.read_table(table) == []
