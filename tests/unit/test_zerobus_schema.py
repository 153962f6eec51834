"""Zerobus emulator pure pieces: schema specs, record validation causes, descriptor checks, token scope."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from airflow_databricks_transfer.testing.zerobus.schema import RecordError, SchemaError, TableSchema
from airflow_databricks_transfer.testing.zerobus.server import _basic_auth, _table_scope

SCHEMA = TableSchema.parse("id BIGINT NOT NULL, name string, small TINYINT, ts TIMESTAMP, d DATE, ok BOOLEAN")


def test_spec_round_trips_and_maps_to_arrow() -> None:
    assert (
        SCHEMA.to_spec() == "id BIGINT NOT NULL, name STRING, small TINYINT, ts TIMESTAMP, d DATE, ok BOOLEAN"
    )
    assert TableSchema.parse(SCHEMA.to_spec()) == SCHEMA
    assert TableSchema.parse("id:long not null") == TableSchema.parse("id BIGINT NOT NULL")
    arrow = SCHEMA.arrow()
    assert not arrow.field("id").nullable and str(arrow.field("ts").type) == "timestamp[us, tz=UTC]"
    assert TableSchema.from_arrow(arrow) == SCHEMA


@pytest.mark.parametrize(
    "spec", ["", "id", "id DECIMAL", "id BIGINT PRIMARY KEY", "a INT, A INT", "bad-name INT"]
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(SchemaError):
        TableSchema.parse(spec)


def test_json_row_normalises_values() -> None:
    row = SCHEMA.json_row('{"ID": 5, "ts": "1970-01-01T00:00:01Z", "d": "1970-01-11", "ok": true}')
    assert row == {"id": 5, "name": None, "small": None, "ts": 1_000_000, "d": 10, "ok": True}


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ('{"id": 1, "extra": 2}', "FIELD_NOT_IN_TABLE"),
        ('{"name": "x"}', "MISSING_REQUIRED_COLUMN"),
        ('{"id": null}', "MISSING_REQUIRED_COLUMN"),
        ('{"id": "1"}', "TYPE_INCOMPATIBLE"),
        ('{"id": true}', "TYPE_INCOMPATIBLE"),
        ('{"id": 1.5}', "TYPE_INCOMPATIBLE"),
        ('{"id": 1, "small": 128}', "TYPE_INCOMPATIBLE"),
        ('{"id": 1, "ts": "yesterday"}', "TYPE_INCOMPATIBLE"),
        ("[1]", "INVALID_JSON"),
        ("{", "INVALID_JSON"),
    ],
)
def test_json_records_that_do_not_fit_are_rejected_whole(text: str, cause: str) -> None:
    with pytest.raises(RecordError) as err:
        SCHEMA.json_row(text)
    assert err.value.cause == cause


def _descriptor(*fields: tuple[str, int]) -> bytes:
    msg = descriptor_pb2.DescriptorProto(name="Row")
    for number, (name, type_) in enumerate(fields, 1):
        msg.field.add(
            name=name, number=number, type=type_, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        )
    data: bytes = msg.SerializeToString()
    return data


FD = descriptor_pb2.FieldDescriptorProto
TWO = TableSchema.parse("id BIGINT NOT NULL, name STRING")


def test_proto_decoder_reads_presence_and_defaults() -> None:
    decode = TWO.proto_decoder(_descriptor(("id", FD.TYPE_INT64), ("name", FD.TYPE_STRING)))
    # an empty message: the NOT NULL column reads the proto default (proto3 writers omit zeros)
    assert decode(b"") == {"id": 0, "name": None}
    assert decode(bytes.fromhex("0807") + b"\x12\x02hi") == {"id": 7, "name": "hi"}
    with pytest.raises(RecordError) as err:
        decode(b"\xff\xff")
    assert err.value.cause == "INVALID_PROTO"


@pytest.mark.parametrize(
    ("fields", "cause"),
    [
        ((("id", FD.TYPE_INT64),), "FIELD_COUNT_MISMATCH"),
        ((("id", FD.TYPE_INT64), ("name", FD.TYPE_STRING), ("x", FD.TYPE_BOOL)), "FIELD_NOT_IN_TABLE"),
        ((("id", FD.TYPE_STRING), ("name", FD.TYPE_STRING)), "TYPE_INCOMPATIBLE"),
    ],
)
def test_descriptors_that_do_not_match_the_table_are_refused(
    fields: tuple[tuple[str, int], ...], cause: str
) -> None:
    with pytest.raises(RecordError) as err:
        TWO.proto_decoder(_descriptor(*fields))
    assert err.value.cause == cause


def test_token_request_helpers() -> None:
    assert _basic_auth("Basic " + "YTpi") == ("a", "b")  # base64("a:b")
    assert _basic_auth("Basic !!") == (None, None) and _basic_auth(None) == (None, None)
    details = (
        '[{"object_type":"CATALOG","object_full_path":"c"},'
        '{"object_type":"TABLE","object_full_path":"c.s.t"}]'
    )
    assert _table_scope(details) == "c.s.t"
    assert _table_scope("") is None and _table_scope("not json") is None
