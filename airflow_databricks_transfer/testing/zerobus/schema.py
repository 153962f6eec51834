"""Table schemas and record validation for the Zerobus emulator.

Zerobus never creates or evolves a table and accepts or rejects each record as a whole
(reference section 5.4), so every record is checked here against the table's columns before it can reach a
commit. JSON records name columns by key; protobuf records are decoded with the descriptor the client gave
at stream creation. Values are normalised to what the Arrow column takes (timestamps as int microseconds,
dates as int days) so a commit is one ``pyarrow.Table.from_pylist``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

# Delta/Spark SQL type names (and their aliases) -> canonical name
_ALIASES = {
    "tinyint": "byte",
    "byte": "byte",
    "smallint": "short",
    "short": "short",
    "int": "int",
    "integer": "int",
    "bigint": "long",
    "long": "long",
    "float": "float",
    "real": "float",
    "double": "double",
    "string": "string",
    "varchar": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "binary": "binary",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
}
_ARROW: dict[str, pa.DataType] = {
    "byte": pa.int8(),
    "short": pa.int16(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "boolean": pa.bool_(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ntz": pa.timestamp("us"),
}
_SQL = {"byte": "TINYINT", "short": "SMALLINT", "int": "INT", "long": "BIGINT"}
_INT_BITS = {"byte": 8, "short": 16, "int": 32, "long": 64}
# Arrow type string (as deltalake reports a table's schema) -> canonical name
_FROM_ARROW = {str(t): name for name, t in _ARROW.items()}
_FROM_ARROW.update({"large_string": "string", "string_view": "string", "large_binary": "binary"})
# the proto wire type each column type is written with (generate_proto.py's map, reference 5.4)
_PROTO_TYPES: dict[str, frozenset[int]] = {
    "byte": frozenset(
        {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
    ),
    "short": frozenset(
        {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
    ),
    "int": frozenset(
        {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
    ),
    "long": frozenset(
        {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
    ),
    "float": frozenset({FieldDescriptor.TYPE_FLOAT}),
    "double": frozenset({FieldDescriptor.TYPE_DOUBLE}),
    "string": frozenset({FieldDescriptor.TYPE_STRING}),
    "boolean": frozenset({FieldDescriptor.TYPE_BOOL}),
    "binary": frozenset({FieldDescriptor.TYPE_BYTES}),
    "date": frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32}),
    "timestamp": frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64}),
    "timestamp_ntz": frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64}),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class SchemaError(ValueError):
    """A table schema that cannot be created (bad spec)."""


class RecordError(ValueError):
    """A record the table does not take; ``cause`` is one of the service's SCHEMA_VALIDATION_FAILED causes."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise SchemaError(f"column name {self.name!r}: ASCII letters, digits and underscores only")
        if self.type not in _ARROW:
            raise SchemaError(f"column {self.name}: unsupported type {self.type!r}")

    def to_spec(self) -> str:
        return f"{self.name} {_SQL.get(self.type, self.type.upper())}" + (
            "" if self.nullable else " NOT NULL"
        )


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaError("a table needs at least one column")
        names = [c.name.lower() for c in self.columns]
        if len(set(names)) != len(names):
            raise SchemaError("duplicate column names")

    @classmethod
    def parse(cls, spec: str) -> TableSchema:
        """A SQL DDL column list, ``"id BIGINT NOT NULL, name STRING"`` (``name:type`` works too)."""
        columns = []
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            words = item.replace(":", " ", 1).split()
            if len(words) < 2:
                raise SchemaError(f"bad column spec {item!r}: expected 'name TYPE [NOT NULL]'")
            name, type_name, rest = words[0], words[1].lower(), [w.lower() for w in words[2:]]
            if rest not in ([], ["not", "null"], ["null"]):
                raise SchemaError(f"bad column spec {item!r}: expected 'name TYPE [NOT NULL]'")
            if type_name not in _ALIASES:
                raise SchemaError(f"column {name}: unsupported type {words[1]!r}")
            columns.append(Column(name, _ALIASES[type_name], nullable=rest != ["not", "null"]))
        return cls(tuple(columns))

    @classmethod
    def from_any(cls, spec: str | Sequence[Mapping[str, Any]] | TableSchema) -> TableSchema:
        if isinstance(spec, TableSchema):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        return cls(
            tuple(
                Column(
                    str(c["name"]),
                    _ALIASES.get(str(c["type"]).lower(), str(c["type"])),
                    bool(c.get("nullable", True)),
                )
                for c in spec
            )
        )

    @classmethod
    def from_arrow(cls, schema: pa.Schema) -> TableSchema:
        cols = []
        for f in schema:
            type_name = _FROM_ARROW.get(str(f.type))
            if type_name is None:
                raise SchemaError(f"column {f.name}: type {f.type} is not one the emulator writes")
            cols.append(Column(f.name, type_name, f.nullable))
        return cls(tuple(cols))

    def to_spec(self) -> str:
        return ", ".join(c.to_spec() for c in self.columns)

    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, _ARROW[c.type], nullable=c.nullable) for c in self.columns])

    # ------------------------------------------------------------------ JSON records
    def json_row(self, text: str) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except ValueError as err:
            raise RecordError("INVALID_JSON", f"record is not valid JSON: {err}") from None
        if not isinstance(obj, dict):
            raise RecordError("INVALID_JSON", "record must be a JSON object")
        by_lower = {c.name.lower(): c for c in self.columns}
        row: dict[str, Any] = {}
        for key, value in obj.items():
            col = by_lower.get(key.lower())
            if col is None:
                raise RecordError("FIELD_NOT_IN_TABLE", f"field '{key}' is not a column of the table")
            row[col.name] = None if value is None else _coerce_json(col, value)
        for col in self.columns:
            if row.get(col.name) is None:
                if not col.nullable:
                    raise RecordError(
                        "MISSING_REQUIRED_COLUMN",
                        f"column '{col.name}' is NOT NULL and the record has no value",
                    )
                row[col.name] = None
        return row

    # ------------------------------------------------------------------ protobuf records
    def proto_decoder(self, descriptor_bytes: bytes) -> Callable[[bytes], dict[str, Any]]:
        """Check a stream's descriptor against the table (at stream creation) and return a record decoder."""
        try:
            desc = descriptor_pb2.DescriptorProto.FromString(descriptor_bytes)
        except DecodeError as err:
            raise RecordError(
                "INVALID_DESCRIPTOR", f"descriptor_proto is not a DescriptorProto: {err}"
            ) from None
        if not desc.name:
            raise RecordError("INVALID_DESCRIPTOR", "descriptor_proto has no message name")
        cls = _message_class(desc)
        fields = {f.name.lower(): f for f in cls.DESCRIPTOR.fields}
        by_lower = {c.name.lower(): c for c in self.columns}
        extra = sorted(set(fields) - set(by_lower))
        if extra:
            raise RecordError("FIELD_NOT_IN_TABLE", f"descriptor fields not in the table: {', '.join(extra)}")
        missing = sorted(set(by_lower) - set(fields))
        if missing:
            raise RecordError(
                "FIELD_COUNT_MISMATCH", f"table columns missing from the descriptor: {', '.join(missing)}"
            )
        plan: list[tuple[Column, FieldDescriptor]] = []
        for key, col in by_lower.items():
            f = fields[key]
            if _repeated(f) or f.type not in _PROTO_TYPES[col.type]:
                raise RecordError(
                    "TYPE_INCOMPATIBLE",
                    f"field '{f.name}' has a proto type that does not fit column {col.to_spec()}",
                )
            plan.append((col, f))

        def decode(payload: bytes) -> dict[str, Any]:
            try:
                msg = cls.FromString(payload)
            except DecodeError as err:
                raise RecordError(
                    "INVALID_PROTO", f"record does not decode with the stream's descriptor: {err}"
                ) from None
            row: dict[str, Any] = {}
            for col, f in plan:
                if f.has_presence and not msg.HasField(f.name):
                    # proto3-style writers omit default values; a NOT NULL column reads the default
                    row[col.name] = None if col.nullable else _check_range(col, getattr(msg, f.name))
                else:
                    row[col.name] = _check_range(col, getattr(msg, f.name))
            return row

        return decode


def _message_class(desc: descriptor_pb2.DescriptorProto) -> type[Message]:
    """Wrap the bare row DescriptorProto in a synthetic file so nested type references resolve."""
    package = ""
    prefix = f".{desc.name}."
    for f in desc.field:
        if f.type_name and prefix in f.type_name:
            package = f.type_name[1 : f.type_name.index(prefix)]
            break
    file = descriptor_pb2.FileDescriptorProto(
        name="zerobus_emulator_row.proto", package=package, syntax="proto2"
    )
    file.message_type.add().CopyFrom(desc)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(file)
        full = f"{package}.{desc.name}" if package else desc.name
        cls: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
        return cls
    except (TypeError, KeyError) as err:
        raise RecordError("INVALID_DESCRIPTOR", f"descriptor_proto is not self-contained: {err}") from None


def _repeated(f: FieldDescriptor) -> bool:
    # protobuf 6 deprecates ``label``; 4.x/5.x lack ``is_repeated``
    if hasattr(f, "is_repeated"):
        return bool(f.is_repeated)
    return bool(f.label == FieldDescriptor.LABEL_REPEATED)


def _check_range(col: Column, value: Any) -> Any:
    bits = _INT_BITS.get(col.type)
    if bits is not None and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise RecordError("TYPE_INCOMPATIBLE", f"value {value} out of range for column {col.to_spec()}")
    return value


def _coerce_json(col: Column, value: Any) -> Any:
    t = col.type
    bad = RecordError("TYPE_INCOMPATIBLE", f"value {value!r} does not fit column {col.to_spec()}")
    if t in _INT_BITS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return _check_range(col, value)
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
            raise bad
        return float(value)
    if t == "string":
        if not isinstance(value, str):
            raise bad
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise bad
        return value
    if t == "binary":
        if not isinstance(value, str):
            raise bad
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise bad from None
    if t == "date":
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_range(Column(col.name, "int"), value)
        if isinstance(value, str):
            try:
                return (dt.date.fromisoformat(value) - dt.date(1970, 1, 1)).days
            except ValueError:
                raise bad from None
        raise bad
    # timestamp / timestamp_ntz: int microseconds since the epoch, or ISO 8601 text
    if isinstance(value, int) and not isinstance(value, bool):
        return _check_range(Column(col.name, "long"), value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise bad from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        delta = parsed - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise bad
