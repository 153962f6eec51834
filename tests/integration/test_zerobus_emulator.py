"""The official databricks-zerobus-ingest-sdk (Rust core) against the Zerobus emulator, over real sockets,
with the result read back from the Delta table by ``deltalake``."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from zerobus import (
    AckCallback,
    HeadersProvider,
    NonRetriableException,
    StreamConfigurationOptions,
    TableProperties,
    ZerobusException,
    ZerobusSdk,
)

from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator

pytestmark = pytest.mark.integration

SCHEMA = "id BIGINT NOT NULL, body STRING"
_names = itertools.count(1)


def new_table(emu: ZerobusEmulator, schema: str = SCHEMA) -> str:
    name = f"main.default.t{os.getpid()}_{next(_names)}"
    emu.create_table(name, schema)
    return name


def options(**kwargs: Any) -> StreamConfigurationOptions:
    """Short SDK timeouts so a failing path fails in seconds, not the SDK's minutes."""
    base: dict[str, Any] = {
        "recovery_backoff_ms": 200,
        "recovery_timeout_ms": 5000,
        "flush_timeout_ms": 20_000,
    }
    base.update(kwargs)
    return StreamConfigurationOptions(**base)


class Headers(HeadersProvider):  # type: ignore[misc]
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        super().__init__()
        self.headers = headers

    def get_headers(self) -> list[tuple[str, str]]:
        return self.headers


class Acks(AckCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.acked: list[int] = []
        self.errors: list[int] = []

    def on_ack(self, offset: int) -> None:
        self.acked.append(offset)

    def on_error(self, offset: int, error_message: str) -> None:
        self.errors.append(offset)


def ids(emu: ZerobusEmulator, table: str) -> list[int]:
    return sorted(row["id"] for row in emu.read_table(table))


def test_json_single_and_batch_over_oauth(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    acks = Acks()
    sdk = ZerobusSdk(emu.endpoint, emu.uc_url)
    stream = sdk.create_stream(
        client_id=emu.client_id,
        client_secret=emu.client_secret,
        table_properties=TableProperties(table),
        options=options(ack_callback=acks),
    )
    first = stream.ingest_record_offset({"id": 1, "body": "one"})
    batch = stream.ingest_records_offset([json.dumps({"id": i, "body": f"b{i}"}) for i in range(2, 7)])
    single_str = stream.ingest_record_offset('{"id": 7}')
    assert (first, batch, single_str) == (0, 1, 2)  # a batch takes one offset
    stream.flush()
    stream.close()

    assert sorted(acks.acked) == [0, 1, 2] and acks.errors == []
    rows = sorted(emu.read_table(table), key=lambda r: r["id"])
    assert rows[0] == {"id": 1, "body": "one"} and rows[-1] == {"id": 7, "body": None}
    assert [r["id"] for r in rows] == list(range(1, 8))
    stats = emu.stats()
    assert stats["tokens_issued"] == 1
    [entry] = emu.streams(table)
    assert (entry.status, entry.record_type, entry.requests, entry.records) == ("OK", "JSON", 3, 7)
    assert entry.acked_up_to == 2 and entry.records_acked == entry.records_committed == 7
    assert entry.user_agent.startswith("zerobus-sdk-py/")
    # the table is a real Delta table whose commits hold several records each
    assert DeltaTable(str(emu.table_path(table))).version() <= 3


def test_bad_client_secret_is_refused_without_retry(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    sdk = ZerobusSdk(emu.endpoint, emu.uc_url)
    with pytest.raises(NonRetriableException):
        sdk.create_stream(
            client_id=emu.client_id,
            client_secret="wrong-secret",
            table_properties=TableProperties(table),
            options=options(),
        )
    assert emu.stats()["tokens_refused"] == 1
    assert emu.streams() == []


def test_token_for_one_table_cannot_write_another(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table, other = new_table(emu), new_table(emu)
    # a token minted for `table` presented with `other`'s header and create_stream
    form = {
        "grant_type": "client_credentials",
        "authorization_details": json.dumps(
            [{"object_type": "TABLE", "object_full_path": table, "privileges": ["SELECT", "MODIFY"]}]
        ),
    }
    status, body = emu.server.issue_token(
        _basic(emu.client_id, emu.client_secret), {k: [v] for k, v in form.items()}
    )
    assert status == 200
    sdk = ZerobusSdk(emu.endpoint, emu.uc_url)
    provider = Headers(
        [("authorization", f"Bearer {body['access_token']}"), ("x-databricks-zerobus-table-name", other)]
    )
    with pytest.raises(NonRetriableException):
        sdk.create_stream(
            headers_provider=provider, table_properties=TableProperties(other), options=options()
        )


def _basic(client_id: str, secret: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _row_class(package: str = "emu.test") -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="emu_row.proto", package=package, syntax="proto2")
    msg = file.message_type.add(name="Row")
    fd = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="id", number=1, type=fd.TYPE_INT64, label=fd.LABEL_REQUIRED)
    msg.field.add(name="body", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Row"))


def test_protobuf_single_and_batch_with_headers_provider(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    row = _row_class()
    sdk = ZerobusSdk(emu.endpoint, "")
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table, descriptor_proto=row.DESCRIPTOR),
        options=options(),
    )
    stream.ingest_record_offset(row(id=1, body="p1"))
    stream.ingest_records_offset([row(id=2), row(id=3, body="p3").SerializeToString()])
    stream.flush()
    stream.close()
    assert sorted(emu.read_table(table), key=lambda r: r["id"]) == [
        {"id": 1, "body": "p1"},
        {"id": 2, "body": None},
        {"id": 3, "body": "p3"},
    ]
    [entry] = emu.streams(table)
    assert (entry.status, entry.record_type, entry.records) == ("OK", "PROTO", 3)
    assert emu.stats().get("tokens_issued", 0) == 0  # the headers provider path asks no token endpoint


def test_schema_mismatch_is_non_retryable_and_nothing_unacked_lands(
    zerobus_emulator: ZerobusEmulator,
) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    sdk = ZerobusSdk(emu.endpoint, "")
    acks = Acks()
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table),
        options=options(ack_callback=acks),
    )
    stream.ingest_record_offset({"id": 1})
    stream.flush()
    stream.ingest_record_offset({"id": 2, "colour": "red"})  # no such column
    with pytest.raises(NonRetriableException):
        stream.flush()
    stream.close()
    assert acks.acked == [0]  # the refused record is never acknowledged
    assert ids(emu, table) == [1]
    [entry] = emu.streams(table)
    assert entry.status == "INVALID_ARGUMENT" and "FIELD_NOT_IN_TABLE" in entry.detail
    assert len(emu.streams(table)) == 1  # no recovery attempt

    # a protobuf descriptor that does not match the table is refused at stream creation
    wrong = descriptor_pb2.FileDescriptorProto(name="wrong.proto", package="w", syntax="proto2")
    msg = wrong.message_type.add(name="Row")
    msg.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    msg.field.add(name="body", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    with pytest.raises(NonRetriableException):
        sdk.create_stream(
            headers_provider=Headers(emu.headers(table)),
            table_properties=TableProperties(table, descriptor_proto=wrong.SerializeToString()),
            options=options(),
        )
    assert emu.stats()["streams_refused"] == 1


def test_missing_table_is_non_retryable(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    sdk = ZerobusSdk(emu.endpoint, emu.uc_url)
    with pytest.raises(NonRetriableException, match="does not exist"):
        sdk.create_stream(
            client_id=emu.client_id,
            client_secret=emu.client_secret,
            table_properties=TableProperties("main.default.nope"),
            options=options(),
        )
    assert emu.stats()["streams_refused"] == 1  # one attempt, no retries


def test_refusals_with_retryable_and_non_retryable_codes(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    sdk = ZerobusSdk(emu.endpoint, "")
    emu.add_fault(route="zerobus.create", grpc_code="UNAVAILABLE", times=2)
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table),
        options=options(),
    )
    stream.ingest_record_offset({"id": 1})
    stream.close()
    assert ids(emu, table) == [1]
    assert emu.stats()["streams_refused"] == 2

    emu.add_fault(route="zerobus.create", grpc_code="INVALID_ARGUMENT", times=None)
    with pytest.raises(NonRetriableException):
        sdk.create_stream(
            headers_provider=Headers(emu.headers(table)),
            table_properties=TableProperties(table),
            options=options(),
        )
    assert emu.stats()["streams_refused"] == 3


def test_recovery_after_a_dropped_connection_loses_nothing(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    fault = emu.add_fault(route="zerobus.ingest", path=table, nth=3, drop=True)  # before the commit
    sdk = ZerobusSdk(emu.endpoint, "")
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table),
        options=options(),
    )
    for i in range(1, 7):
        stream.ingest_record_offset({"id": i, "body": "x"})
        stream.flush()  # one record in flight: the drop loses exactly record 3, before its commit
    stream.close()
    assert ids(emu, table) == [1, 2, 3, 4, 5, 6]  # resent after recovery, and only once
    stats = emu.stats()
    assert stats["connections_dropped"] == 1
    streams = emu.streams(table)
    assert [s.status for s in streams] == ["DROPPED", "OK"] and fault.id in streams[0].faults


def test_fault_after_the_commit_makes_a_duplicate(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    emu.add_fault(route="zerobus.ingest", path=table, nth=2, grpc_code="UNAVAILABLE", phase="after")
    sdk = ZerobusSdk(emu.endpoint, "")
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table),
        options=options(),
    )
    for i in range(1, 5):
        stream.ingest_record_offset({"id": i})
        stream.flush()  # one record in flight at a time: the duplicate is exactly the faulted one
    stream.close()
    # durable but never acknowledged, so the SDK re-sent it after recovery: at-least-once, on purpose
    assert ids(emu, table) == [1, 2, 2, 3, 4]
    outcomes = [(e.offset_id, e.outcome) for e in emu.ingests(table)]
    assert (1, "committed-unacked") in outcomes  # wire offset 1 of the first stream
    assert [s.status for s in emu.streams(table)] == ["UNAVAILABLE", "OK"]


def test_stalled_acks_fail_the_stream_after_the_sdk_timeout(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    emu.add_fault(route="zerobus.ingest", path=table, delay_s=5.0)
    sdk = ZerobusSdk(emu.endpoint, "")
    stream = sdk.create_stream(
        headers_provider=Headers(emu.headers(table)),
        table_properties=TableProperties(table),
        options=options(recovery=False, server_lack_of_ack_timeout_ms=1000),
    )
    stream.ingest_record_offset({"id": 1})
    with pytest.raises(ZerobusException):
        stream.flush()
    stream.close()
    # committed, never acknowledged: the caller must assume it may or may not be there; it is
    assert ids(emu, table) == [1]
    [entry] = emu.streams(table)
    assert entry.records_committed == 1 and entry.records_acked == 0


def test_standalone_cli_with_control_plane(tmp_path: Path) -> None:
    port_file = tmp_path / "ports"
    table = "main.default.cli"
    argv = [
        "-m",
        "airflow_databricks_transfer.testing.zerobus",
        "--port",
        "0",
        "--warehouse",
        str(tmp_path / "wh"),
    ]
    argv += ["--table", f"{table}={SCHEMA}", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "Zerobus emulator" in banner and table in banner
        grpc_port, http_port = (int(p) for p in port_file.read_text().split())
        control = f"http://127.0.0.1:{http_port}/_emulator"
        req = urllib.request.Request(
            f"{control}/faults",
            data=json.dumps({"route": "zerobus.create", "grpc_code": "UNAVAILABLE"}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req) as resp:
            assert json.load(resp)["ids"]
        sdk = ZerobusSdk(f"http://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
        stream = sdk.create_stream(
            client_id="emulator-client",
            client_secret="emulator-secret",
            table_properties=TableProperties(table),
            options=options(),
        )
        stream.ingest_records_offset([{"id": 1}, {"id": 2}])
        stream.close()
        with urllib.request.urlopen(f"{control}/stats") as resp:
            stats = json.load(resp)
        assert stats["streams_refused"] == 1 and stats["tables"][table]["records_committed"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    rows = DeltaTable(str(tmp_path / "wh" / "main" / "default" / "cli")).to_pyarrow_table().to_pylist()
    assert sorted(r["id"] for r in rows) == [1, 2]


def test_concurrent_streams_into_one_table_share_commits(zerobus_emulator: ZerobusEmulator) -> None:
    emu = zerobus_emulator
    table = new_table(emu)
    sdk = ZerobusSdk(emu.endpoint, "")

    def produce(start: int) -> None:
        stream = sdk.create_stream(
            headers_provider=Headers(emu.headers(table)),
            table_properties=TableProperties(table),
            options=options(),
        )
        for k in range(5):
            stream.ingest_records_offset([{"id": start + k * 10 + j} for j in range(10)])
        stream.close()

    threads = [threading.Thread(target=produce, args=(n * 1000,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert ids(emu, table) == sorted(n * 1000 + k for n in range(3) for k in range(50))
    assert emu.stats()["tables"][table]["commits"] < 15  # batched: fewer commits than requests
