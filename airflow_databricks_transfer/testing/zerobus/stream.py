"""One ``EphemeralStream`` call: create, then ingest requests in, cumulative durability acks out.

grpcio's sync handlers are generators, so requests are read on a thread of their own while the handler
thread yields acks: the SDK pipelines requests and waits for acks concurrently (reference 5.5). An ack
for wire offset N goes out only after the Delta commit holding N's records (and everything before it).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from airflow_databricks_transfer.testing.faults import FaultRule, RequestInfo
from airflow_databricks_transfer.testing.zerobus.proto import zerobus_service_pb2 as pb
from airflow_databricks_transfer.testing.zerobus.schema import RecordError
from airflow_databricks_transfer.testing.zerobus.streamlog import IngestEntry, StreamEntry
from airflow_databricks_transfer.testing.zerobus.warehouse import Table, split_table_name

if TYPE_CHECKING:
    from airflow_databricks_transfer.testing.zerobus.server import ZerobusServer

TABLE_HEADER = "x-databricks-zerobus-table-name"
_RECORD_TYPES = {pb.PROTO: "PROTO", pb.JSON: "JSON", pb.AVRO: "AVRO"}


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class _Ack:
    offset: int
    records: int


@dataclass
class _End:
    code: grpc.StatusCode | None = None  # None: finish with OK
    detail: str = ""
    dropped: bool = False
    gone: bool = False  # the call is already over (client cancelled or connection lost)


def _code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name]


class StreamSession:
    def __init__(
        self, server: ZerobusServer, requests: Iterator[pb.EphemeralStreamRequest], ctx: Any
    ) -> None:
        self.server = server
        self.requests = requests
        self.ctx: grpc.ServicerContext = ctx
        self.out: queue.Queue[_Ack | _End] = queue.Queue()
        self.entry: StreamEntry | None = None
        self.table: Table | None = None
        self._lock = threading.Condition()
        self._in_flight = 0  # submissions not yet committed (or failed)
        self._broken = False  # once set, nothing more is acknowledged
        self._hold_until = 0.0  # a stall fault: no ack leaves before this monotonic time

    # ------------------------------------------------------------------ the call
    def run(self) -> Iterator[pb.EphemeralStreamResponse]:
        # Headers first: the SDK awaits them before it sends create_stream (reference 0.2).
        self.ctx.send_initial_metadata(())
        self.ctx.add_callback(lambda: self.out.put(_End(grpc.StatusCode.CANCELLED, "call ended", gone=True)))
        try:
            stream_id = self._create()
        except _Abort as err:
            self.server.log.count("streams_refused")
            self.ctx.abort(err.code, err.detail)
        yield pb.EphemeralStreamResponse(
            create_stream_response=pb.CreateIngestStreamResponse(stream_id=stream_id)
        )
        threading.Thread(target=self._read, name=f"zerobus-read-{stream_id[:8]}", daemon=True).start()
        yield from self._acks()

    def _create(self) -> str:
        metadata = {k.lower(): v for k, v in self.ctx.invocation_metadata()}
        try:
            first = next(self.requests)
        except StopIteration:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "stream closed before create_stream") from None
        if first.WhichOneof("payload") != "create_stream":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be create_stream")
        req = first.create_stream
        name = req.table_name
        refused = self.server.check_authorization(metadata.get("authorization"), name)
        if refused is not None:
            raise _Abort(*refused)
        header = metadata.get(TABLE_HEADER)
        if self.server.settings.require_table_header and header != name:
            what = "missing" if header is None else f"{header!r} does not name the stream's table"
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"header {TABLE_HEADER} {what}")
        try:
            split_table_name(name)
        except ValueError as err:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        record_type = req.record_type if req.HasField("record_type") else pb.PROTO
        if record_type not in (pb.JSON, pb.PROTO):
            kind = _RECORD_TYPES.get(record_type, "RECORD_TYPE_UNSPECIFIED")
            if kind == "AVRO":
                raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "the emulator does not take AVRO records")
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"record_type {kind} is not accepted")
        table = self.server.warehouse.get(name)
        if table is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Table '{name}' does not exist or is not accessible.")
        if record_type == pb.PROTO:
            if not req.descriptor_proto:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "PROTO stream without descriptor_proto")
            try:
                decode_proto = table.schema.proto_decoder(req.descriptor_proto)
            except RecordError as err:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _schema_detail(name, err)) from None
            self._decode: Callable[[Any], dict[str, Any]] = decode_proto
        else:
            self._decode = table.schema.json_row
        rule = self.server.faults.check(RequestInfo("zerobus.create", "STREAM", name))
        if rule is not None:
            if rule.delay_s > 0:
                time.sleep(rule.delay_s)
            if rule.drop:
                self.server.drop_peer(self.ctx.peer())
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "connection dropped (fault)")
            if rule.grpc_code:
                raise _Abort(_code(rule.grpc_code), rule.message or f"fault {rule.id}")
        self.table = table
        stream_id = str(uuid.uuid4())
        self.entry = self.server.log.open_stream(
            stream_id=stream_id,
            table=name,
            record_type=_RECORD_TYPES[record_type],
            peer=self.ctx.peer(),
            user_agent=metadata.get("user-agent", ""),
        )
        if rule is not None:
            self.entry.faults.append(rule.id)
        return stream_id

    # ------------------------------------------------------------------ requests in
    def _read(self) -> None:
        expected = 0
        try:
            for req in self.requests:
                if self._broken:
                    return
                expected = self._ingest(req, expected)
        except _Abort as err:
            self._fail(_End(err.code, err.detail))
            return
        except Exception:  # noqa: BLE001 - the client went away mid-read (cancel or reset)
            self._fail(_End(grpc.StatusCode.CANCELLED, "client went away"))
            return
        # half-close: finish every commit and ack, then end with OK (reference 2.3 step 6)
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0 or self._broken)
        self.out.put(_End())

    def _ingest(self, req: pb.EphemeralStreamRequest, expected: int) -> int:
        assert self.table is not None and self.entry is not None
        kind = req.WhichOneof("payload")
        if kind == "ingest_record":
            one = req.ingest_record
            offset, which = one.offset_id, one.WhichOneof("record")
            payloads: list[Any] = [] if which is None else [getattr(one, which)]
        elif kind == "ingest_record_batch":
            many = req.ingest_record_batch
            offset, which = many.offset_id, many.WhichOneof("batch")
            payloads = [] if which is None else list(getattr(many, which).records)
        else:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} after create_stream")
        nbytes = sum(len(p) for p in payloads)
        log = self.server.log
        entry = log.ingest(self.entry, offset, len(payloads), nbytes, kind == "ingest_record_batch")
        if offset != expected:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"offset_id {offset} out of order (expected {expected})"
            )
        if not payloads:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {offset} carries no record")
        want = "json" if self.entry.record_type == "JSON" else "proto"
        if not which or not which.startswith(want):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{which} records on a {self.entry.record_type} stream"
            )
        limit = self.server.settings.max_payload_bytes
        if nbytes > limit:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"payload of {nbytes} bytes exceeds the limit of {limit}"
            )
        rule = self.server.faults.check(RequestInfo("zerobus.ingest", "STREAM", self.table.name))
        if rule is not None:
            entry.fault = rule.id
            log.update(self.entry.faults.append, rule.id)
            if rule.phase == "before":
                self._apply_fault(rule, entry)
                rule = None
        try:
            rows = [self._decode(p) for p in payloads]
        except RecordError as err:
            entry.outcome = "refused"
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _schema_detail(self.table.name, err)) from None
        with self._lock:
            self._in_flight += 1
        self.table.submit(rows, nbytes, self._on_commit(offset, len(rows), entry, rule))
        return expected + 1

    def _apply_fault(self, rule: FaultRule, entry: IngestEntry) -> None:
        if rule.delay_s > 0:
            with self._lock:
                self._hold_until = max(self._hold_until, time.monotonic() + rule.delay_s)
        if rule.drop or rule.grpc_code:
            entry.outcome = "lost" if rule.phase == "before" else "committed-unacked"
            if rule.drop:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "DROP")
            assert rule.grpc_code is not None
            raise _Abort(_code(rule.grpc_code), rule.message or f"fault {rule.id}")

    def _on_commit(
        self, offset: int, records: int, entry: IngestEntry, rule: FaultRule | None
    ) -> Callable[[int | None, BaseException | None], None]:
        def done(version: int | None, error: BaseException | None) -> None:
            assert self.entry is not None
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()
            if error is not None:
                entry.outcome = "lost"
                self._fail(_End(grpc.StatusCode.INTERNAL, f"commit failed: {type(error).__name__}"))
                return
            self.server.log.update(_add_committed, self.entry, records)
            if self._broken:
                entry.outcome = "committed-unacked"
                return
            if rule is not None:  # phase "after": durable first, then the fault
                try:
                    self._apply_fault(rule, entry)
                except _Abort as err:
                    self._fail(_End(err.code, err.detail))
                    return
            self.out.put(_Ack(offset, records))
            entry.outcome = "acked"

        return done

    def _fail(self, end: _End) -> None:
        with self._lock:
            if self._broken:
                return
            self._broken = True
            self._lock.notify_all()
        if end.detail == "DROP":
            end = _End(grpc.StatusCode.UNAVAILABLE, "connection dropped (fault)", dropped=True)
        self.out.put(end)

    # ------------------------------------------------------------------ acks out
    def _acks(self) -> Iterator[pb.EphemeralStreamResponse]:
        assert self.entry is not None
        try:
            while True:
                item = self.out.get()
                if isinstance(item, _Ack):
                    self._wait_hold()
                    records = item.records
                    while True:  # coalesce whatever else is ready: acks are cumulative
                        try:
                            nxt = self.out.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(nxt, _End):
                            self.out.put(nxt)  # after this ack
                            break
                        item, records = nxt, records + nxt.records
                    self.server.log.update(_add_acked, self.entry, item.offset, records)
                    self.server.log.count("acks_sent")
                    yield pb.EphemeralStreamResponse(
                        ingest_record_response=pb.IngestRecordResponse(
                            durability_ack_up_to_offset=item.offset
                        )
                    )
                    continue
                self._finish(item)
                if item.code is not None and not item.gone:
                    self.ctx.abort(item.code, item.detail)
                return
        finally:
            with self._lock:
                self._broken = True
                self._lock.notify_all()

    def _wait_hold(self) -> None:
        while self.ctx.is_active():
            with self._lock:
                left = self._hold_until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    def _finish(self, end: _End) -> None:
        assert self.entry is not None
        if end.dropped:
            self.server.drop_peer(self.ctx.peer())
        status = "DROPPED" if end.dropped else ("OK" if end.code is None else end.code.name)
        self.server.log.update(_close, self.entry, status, end.detail)


def _schema_detail(table: str, err: RecordError) -> str:
    detail = {"reason": "SCHEMA_VALIDATION_FAILED", "causes": err.cause, "table": table}
    return f"Record does not match the schema of table '{table}': {err} {json.dumps(detail)}"


def _add_committed(entry: StreamEntry, records: int) -> None:
    entry.records_committed += records


def _add_acked(entry: StreamEntry, offset: int, records: int) -> None:
    entry.acked_up_to = offset
    entry.records_acked += records


def _close(entry: StreamEntry, status: str, detail: str) -> None:
    if entry.closed is None:
        entry.closed = time.time()
        entry.status = status
        entry.detail = detail
