"""The Ingester against an in-memory RecordSink double (a pure piece: the real SDK and emulator are
exercised by the integration tests) and real files: no record lost across broken streams and killed
tries, duplicates only inside the reported window, checkpoints only after acknowledged flushes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint, SourceIdentity
from airflow_databricks_transfer.engine.errors import (
    ConnectionLostError,
    InvalidRequestError,
    RetryBudgetExceeded,
    SourceChangedError,
)
from airflow_databricks_transfer.engine.ingest import (
    Ingester,
    IngestOptions,
    IngestProgressEvent,
    JsonLinesReader,
    MalformedRecordError,
    RecordsReader,
)
from airflow_databricks_transfer.engine.progress import ProgressEvent
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy

NO_WAIT = RetryPolicy(max_attempts=4, base_delay_s=0.0, max_delay_s=0.0)
TABLE = "main.default.events"


class Killed(BaseException):
    """The task process dies (SIGKILL): nothing of the engine runs after it."""


@dataclass
class Server:
    """The table behind the streams. ``persist_on_send``: records land when sent, before any ack (the
    server persisted them and the ack was lost), which is how duplicates reach a real table."""

    persist_on_send: bool = True
    rows: list[Any] = field(default_factory=list)
    acked_rows: int = 0  # rows a flush has confirmed durable
    opened: int = 0
    closed: int = 0
    sends: int = 0
    # actions by global send / flush number (1-based): an exception to raise
    fail_send: dict[int, BaseException] = field(default_factory=dict)
    fail_flush: dict[int, BaseException] = field(default_factory=dict)
    flushes: int = 0

    def open(self) -> Sink:
        self.opened += 1
        return Sink(self)


class Sink:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.pending: list[Any] = []
        self.closed = False

    def send(self, records: Sequence[Any]) -> None:
        assert not self.closed
        s = self.server
        s.sends += 1
        if s.persist_on_send:
            s.rows.extend(records)
        else:
            self.pending.extend(records)
        err = s.fail_send.pop(s.sends, None)
        if err is not None:
            raise err

    def flush(self) -> None:
        s = self.server
        s.flushes += 1
        err = s.fail_flush.pop(s.flushes, None)
        if err is not None:
            raise err
        s.rows.extend(self.pending)
        self.pending.clear()
        s.acked_rows = len(s.rows)

    def close(self) -> None:
        self.closed = True
        self.server.closed += 1


class Store:
    """The checkpoint sink; checks on every save that what it names is durable on the server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.value: IngestCheckpoint | None = None
        self.saves: list[IngestCheckpoint] = []
        self.cleared = 0

    def save(self, checkpoint: IngestCheckpoint, changed: frozenset[int]) -> None:
        assert changed == frozenset()
        assert checkpoint.records_acked <= self.server.acked_rows, "checkpointed before the ack"
        # round-trips through JSON as it would through the state store
        self.value = IngestCheckpoint.from_json(checkpoint.to_json())
        self.saves.append(self.value)

    def clear(self) -> None:
        self.value = None
        self.cleared += 1


def _events(tmp_path: Path, n: int = 95, name: str = "events.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": i, "pad": "x" * (i % 7)}) + "\n" for i in range(n)))
    return path


def _ingester(server: Server, store: Store, reader: Any, subscribers: Any = None, **options: Any) -> Ingester:
    opts = IngestOptions(
        **{"batch_records": 10, "flush_every_batches": 2, "retry": NO_WAIT, **options},
    )
    return Ingester(server.open, reader, opts, table=TABLE, sink=store, subscribers=subscribers)


def _ids(rows: list[Any]) -> list[int]:
    return [r["id"] for r in rows]


def test_every_record_in_order_and_checkpoints_after_each_flush(tmp_path: Path) -> None:
    server = Server(persist_on_send=False)
    store = Store(server)
    events: list[ProgressEvent] = []
    result = _ingester(server, store, JsonLinesReader(_events(tmp_path)), [events.append]).run()
    assert _ids(server.rows) == list(range(95))
    assert (result.records, result.batches, result.records_sent) == (95, 10, 95)
    assert (result.resent_records, result.retries, result.records_resumed) == (0, 0, 0)
    assert result.resumed_from is None
    assert result.duplicates_window_records == 20  # flush_every_batches x batch_records
    assert result.bytes_read == _events(tmp_path).stat().st_size
    # a save after every flush (2 batches = 20 records), then the final position, then cleared
    assert [cp.records_acked for cp in store.saves] == [20, 40, 60, 80, 95]
    assert store.saves[0].position == {"byte": len("".join(_lines(tmp_path)[:20])), "line": 20}
    assert store.value is None and store.cleared == 1
    assert (server.opened, server.closed) == (1, 1)
    final = events[-1]
    assert isinstance(final, IngestProgressEvent) and final.final
    assert final.records_done == 95 and final.percent == 100.0
    assert result.to_dict()["records"] == 95 and json.dumps(result.to_dict())


def _lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "events.jsonl").read_text().splitlines(keepends=True)


def test_a_killed_try_resumes_after_the_last_acknowledged_position(tmp_path: Path) -> None:
    server = Server(persist_on_send=True)
    store = Store(server)
    path = _events(tmp_path)
    server.fail_send[7] = Killed()  # dies after sending batch 7 (records 60..69), flushed up to 60
    with pytest.raises(Killed):
        _ingester(server, store, JsonLinesReader(path)).run()
    assert store.value is not None and store.value.records_acked == 60
    assert _ids(server.rows) == list(range(70))

    result = _ingester(server, store, JsonLinesReader(path)).run(store.value)
    assert result.resumed_from == {"byte": len("".join(_lines(tmp_path)[:60])), "line": 60}
    assert (result.records, result.records_resumed, result.records_sent) == (95, 60, 35)
    # every record at least once; the duplicates are exactly the unacknowledged batch, inside the window
    assert _ids(server.rows) == list(range(70)) + list(range(60, 95))
    duplicates = len(server.rows) - 95
    assert duplicates == 10 <= result.duplicates_window_records == 20
    assert store.value is None


def test_a_broken_stream_is_reopened_and_the_unacknowledged_records_resent(tmp_path: Path) -> None:
    server = Server(persist_on_send=True)
    store = Store(server)
    server.fail_send[4] = ConnectionLostError("stream reset")  # batch 4 = records 30..39
    server.fail_flush[3] = ConnectionLostError("no ack")  # the flush after batches 5, 6 (40..59)
    result = _ingester(server, store, JsonLinesReader(_events(tmp_path))).run()
    assert _ids(server.rows) == list(range(40)) + list(range(20, 60)) + list(range(40, 95))
    assert result.resent_records == 20 + 20
    assert result.records_sent == 95 + 40
    assert (result.records, result.retries) == (95, 2)
    assert (server.opened, server.closed) == (3, 3)
    assert len(set(_ids(server.rows))) == 95


def test_unacked_records_are_not_lost_when_the_server_dropped_them(tmp_path: Path) -> None:
    server = Server(persist_on_send=False)  # sent, never persisted: the resend is the only copy
    server.fail_flush[2] = ConnectionLostError("stream reset")
    result = _ingester(server, Store(server), JsonLinesReader(_events(tmp_path))).run()
    assert _ids(server.rows) == list(range(95))
    assert result.resent_records == 20


def test_a_stream_that_keeps_breaking_gives_up_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    server = Server()
    store = Store(server)
    server.fail_flush = {n: ConnectionLostError(f"reset {n}") for n in range(2, 50)}
    with pytest.raises(RetryBudgetExceeded, match="broke 4 times without progress"):
        _ingester(server, store, JsonLinesReader(_events(tmp_path))).run()
    assert store.value is not None and store.value.records_acked == 20
    assert server.opened == server.closed == 4


def test_the_budget_bounds_reconnects_across_the_ingest(tmp_path: Path) -> None:
    server = Server()
    server.fail_flush = {n: ConnectionLostError("reset") for n in (2, 4, 6)}  # progress between
    with pytest.raises(RetryBudgetExceeded, match="after 2 retries across the transfer"):
        _ingester(server, Store(server), JsonLinesReader(_events(tmp_path)), max_total_retries=2).run()


def test_a_fatal_error_keeps_the_acknowledged_part(tmp_path: Path) -> None:
    server = Server()
    store = Store(server)
    server.fail_send[5] = InvalidRequestError("record does not match the table schema")
    with pytest.raises(InvalidRequestError, match="schema"):
        _ingester(server, store, JsonLinesReader(_events(tmp_path))).run()
    assert store.value is not None and store.value.records_acked == 40
    assert server.opened == server.closed == 1
    assert store.cleared == 0


def test_a_malformed_line_fails_with_file_and_line_after_checkpointing_the_good_part(
    tmp_path: Path,
) -> None:
    path = _events(tmp_path)
    lines = _lines(tmp_path)
    lines[44] = '{"id": 44,\n'
    path.write_text("".join(lines))
    server = Server(persist_on_send=False)
    store = Store(server)
    with pytest.raises(MalformedRecordError, match=rf"{path}:45: not valid JSON"):
        _ingester(server, store, JsonLinesReader(path)).run()
    assert store.value is not None and store.value.records_acked == 40
    assert _ids(server.rows) == list(range(40))  # the half-sent batch never reached the table


def test_malformed_lines_go_to_the_dead_letter_file_once(tmp_path: Path) -> None:
    path = _events(tmp_path)
    lines = _lines(tmp_path)
    for n in (4, 33, 94):
        lines[n] = f"broken {n}\n"
    path.write_text("".join(lines))
    dead = tmp_path / "dead.jsonl"
    server = Server()
    store = Store(server)
    server.fail_send[4] = Killed()  # a killed try after writing the first two dead letters
    with pytest.raises(Killed):
        _ingester(server, store, JsonLinesReader(path), dead_letter_path=str(dead)).run()
    assert store.value is not None and store.value.dead_lettered == 1  # line 5 is before record 20
    result = _ingester(server, store, JsonLinesReader(path), dead_letter_path=str(dead)).run(store.value)
    assert result.dead_lettered == 3 and result.records == 92
    entries = [json.loads(t) for t in dead.read_text().splitlines()]
    assert [(e["source"], e["line"], e["raw"]) for e in entries] == [
        (str(path), 5, "broken 4"),
        (str(path), 34, "broken 33"),
        (str(path), 95, "broken 94"),
    ]
    assert all("not valid JSON" in e["error"] for e in entries)
    assert set(_ids(server.rows)) == set(range(95)) - {4, 33, 94}


def test_dedupe_keys_are_the_same_in_every_try_and_unique(tmp_path: Path) -> None:
    path = _events(tmp_path)
    server = Server()
    store = Store(server)
    server.fail_send[6] = Killed()
    with pytest.raises(Killed):
        _ingester(server, store, JsonLinesReader(path), dedupe_key="_key").run()
    _ingester(server, store, JsonLinesReader(path), dedupe_key="_key").run(store.value)
    prefix = SourceIdentity.of_file(path).key_prefix()
    by_key: dict[str, set[int]] = {}
    for row in server.rows:
        by_key.setdefault(row["_key"], set()).add(row["id"])
    assert len(server.rows) > 95  # there are duplicates...
    assert len(by_key) == 95  # ...and the key tells them apart exactly
    assert by_key[f"{prefix}:1"] == {0} and by_key[f"{prefix}:95"] == {94}
    assert all(len(ids) == 1 for ids in by_key.values())


def test_convert_runs_after_the_key_and_its_size_bounds_a_batch(tmp_path: Path) -> None:
    server = Server()
    records = [{"id": i} for i in range(12)]
    ingester = Ingester(
        server.open,
        RecordsReader(records),
        IngestOptions(batch_records=100, batch_bytes=100, retry=NO_WAIT, dedupe_key="k"),
        table=TABLE,
        convert=lambda r: json.dumps(r).encode() + b" " * 30,
    )
    result = ingester.run()
    assert [json.loads(r)["id"] for r in server.rows] == list(range(12))
    assert json.loads(server.rows[3])["k"].endswith(":3")
    assert result.batches == server.sends == 6  # two ~60-byte records per 100-byte batch
    assert records[0] == {"id": 0}  # the caller's records are not modified


def test_a_checkpoint_of_another_table_starts_clean(tmp_path: Path) -> None:
    path = _events(tmp_path, 5)
    ident = SourceIdentity.of_file(path)
    foreign = IngestCheckpoint("main.default.other", ident, "jsonl", {"byte": 10, "line": 1}, 1, 1)
    server = Server()
    result = _ingester(server, Store(server), JsonLinesReader(path)).run(foreign)
    assert result.restarted_reason == "checkpoint is for table main.default.other, not main.default.events"
    assert result.resumed_from is None and _ids(server.rows) == list(range(5))


def test_a_changed_source_is_refused(tmp_path: Path) -> None:
    path = _events(tmp_path, 30)
    server = Server()
    store = Store(server)
    server.fail_send[3] = Killed()
    with pytest.raises(Killed):
        _ingester(server, store, JsonLinesReader(path)).run()
    assert store.value is not None
    with path.open("a") as f:
        f.write('{"id": 30}\n')
    with pytest.raises(SourceChangedError, match=r"source size changed .* Clear the checkpoint"):
        _ingester(server, store, JsonLinesReader(path)).run(store.value)
    records = [{"id": 1}]
    stale = IngestCheckpoint(TABLE, RecordsReader([{"id": 2}]).identity(), "records", {"index": 1}, 1, 1)
    with pytest.raises(SourceChangedError, match="digest differs"):
        Ingester(server.open, RecordsReader(records), table=TABLE).run(stale)


def test_a_given_source_identity_names_the_checkpoint_and_keys(tmp_path: Path) -> None:
    """A Volume file downloaded to a temp path: the checkpoint and keys name the Volume file."""
    path = _events(tmp_path, 30)
    volume = SourceIdentity("/Volumes/main/default/landing/events.jsonl", 1234, None, "etag-1")
    server = Server()
    store = Store(server)
    server.fail_send[3] = Killed()
    opts = IngestOptions(batch_records=10, flush_every_batches=1, retry=NO_WAIT, dedupe_key="k")

    def ingester() -> Ingester:
        return Ingester(server.open, JsonLinesReader(path), opts, table=TABLE, sink=store, source=volume)

    with pytest.raises(Killed):
        ingester().run()
    assert store.value is not None and store.value.source == volume
    result = ingester().run(store.value)
    assert result.source == volume.uri and result.records_resumed == 20
    assert server.rows[0]["k"] == f"{volume.key_prefix()}:1"


def test_a_source_that_changes_during_the_ingest_stops_it(tmp_path: Path) -> None:
    path = _events(tmp_path, 50)
    server = Server()

    class Appender(Sink):
        def flush(self) -> None:
            super().flush()
            with path.open("a") as f:
                f.write('{"id": 999}\n')

    ingester = Ingester(
        lambda: Appender(server),
        JsonLinesReader(path),
        IngestOptions(batch_records=10, flush_every_batches=1, retry=NO_WAIT),
        table=TABLE,
    )
    with pytest.raises(SourceChangedError, match="during the ingest"):
        ingester.run()


def test_cancel_stops_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    server = Server()
    store = Store(server)
    ingester = _ingester(server, store, JsonLinesReader(_events(tmp_path)))

    class CancelAfter(Sink):
        def flush(self) -> None:
            super().flush()
            ingester.cancel()

    ingester.open_sink = lambda: CancelAfter(server)
    with pytest.raises(Cancelled):
        ingester.run()
    assert store.value is not None and store.value.records_acked == 20
    assert server.closed == 1


def test_an_empty_source_opens_no_stream(tmp_path: Path) -> None:
    server = Server()
    store = Store(server)
    result = _ingester(server, store, JsonLinesReader(_events(tmp_path, 0))).run()
    assert (result.records, result.batches, server.opened) == (0, 0, 0)
    assert store.saves == [] and store.cleared == 1


def test_a_longer_checkpoint_interval_widens_the_window(tmp_path: Path) -> None:
    server = Server()
    store = Store(server)
    result = _ingester(server, store, JsonLinesReader(_events(tmp_path)), checkpoint_interval_s=3600.0).run()
    # the first flush saves, the others fall inside the interval; the final state is always saved
    assert [cp.records_acked for cp in store.saves] == [20, 95]
    assert result.duplicates_window_records == 75


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_records": 0}, "must be >= 1"),
        ({"flush_interval_s": -1}, "intervals"),
        ({"dedupe_key": ""}, "column name"),
        ({"max_total_retries": -1}, "max_total_retries"),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IngestOptions(**options)


def test_dedupe_needs_object_records() -> None:
    server = Server()
    ingester = Ingester(server.open, RecordsReader([b"\x08\x01"]), IngestOptions(dedupe_key="k"), table=TABLE)
    with pytest.raises(Exception, match="dedupe_key needs records that are objects, not bytes"):
        ingester.run()
