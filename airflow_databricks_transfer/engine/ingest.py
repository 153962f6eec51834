"""Streaming ingestion: read records from a source, send them in batches, checkpoint source positions.

Zerobus acknowledges records with offsets that restart at 0 on every stream (and on the SDK's own
recovery), so no server offset can say how far an ingest got. What can is the position in the source
after the last record of a flushed batch: ``RecordSink.flush`` returns only once everything sent is
durable, and only then is that position checkpointed (durable before checkpointed). A retry, in-process
after a broken stream or as a new task try, reads on from there:

- no record is lost: every record before the checkpointed position was acknowledged;
- duplicates are bounded: the records sent after the last checkpointed position may already be in the
  table when the try dies, and are sent again. With ``checkpoint_interval_s=0`` (a checkpoint after
  every flush) that window is at most ``flush_every_batches * batch_records`` records; the result
  reports the largest window this run really had (``duplicates_window_records``) and how many records
  it did resend (``resent_records``).

Exact de-duplication downstream: with ``IngestOptions.dedupe_key`` every record carries a key that is
the same in every try and unique per source record: ``"<16 hex of SHA-256(uri, size, mtime_ns,
digest)>:<where>"`` with ``<where>`` the JSON Lines line number (1-based), the CSV data row number
(1-based, header excluded), ``<row group>.<row>`` for Parquet (0-based), or the record index (0-based).

A fatal error (bad input, schema mismatch, missing table, bad credentials) keeps the checkpoint: what
it names is acknowledged, and a retry after the cause is fixed must not send it again. A checkpoint
for another table, source or format is discarded (logged); one for the same source whose size, mtime
or content changed is refused (``SourceChangedError``): positions in another version of a file mean
nothing, and starting over would duplicate everything already ingested. Clear it to start over.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import IO, Any, Protocol

from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint, IngestFormat, SourceIdentity
from airflow_databricks_transfer.engine.errors import (
    FatalError,
    RetryableError,
    RetryBudgetExceeded,
    SourceChangedError,
)
from airflow_databricks_transfer.engine.ports import IngestCheckpointSink, NullSink, RecordSink
from airflow_databricks_transfer.engine.progress import (
    MiB,
    ProgressEvent,
    ProgressTracker,
    Subscriber,
    _duration,
    _size,
    throughput_mib_per_s,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RecoveryBudget, RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

Position = dict[str, int]
# a dead-letter entry keeps at most this much of the offending line
MAX_RAW_CHARS = 64 * 1024


class MalformedRecordError(FatalError):
    """A line or row that cannot become a record; names the file and the line (and the CSV row)."""

    def __init__(
        self,
        source: str,
        line: int,
        error: str,
        raw: str,
        position_after: Position,
        row: int | None = None,
    ) -> None:
        where = f"{source}:{line}" + (f" (row {row})" if row is not None else "")
        super().__init__(f"{where}: {error}")
        self.source = source
        self.line = line
        self.row = row
        self.error = error
        self.raw = raw[:MAX_RAW_CHARS]
        self.position_after = position_after


OnMalformed = Callable[[MalformedRecordError], None]


class RecordReader(Protocol):
    """Records of one source from a position on, each with the position after it."""

    @property
    def format(self) -> IngestFormat: ...

    @property
    def name(self) -> str:
        """A credential-free name for messages (a path, ``/Volumes/...``, ``records://...``)."""

    def identity(self) -> SourceIdentity: ...

    def ensure_unchanged(self, identity: SourceIdentity) -> None:
        """SourceChangedError unless the source is still the one ``identity`` describes (cheap)."""

    def start(self) -> Position:
        """The position before the first record."""

    def read(
        self, start: Mapping[str, int] | None = None, on_malformed: OnMalformed | None = None
    ) -> Iterator[tuple[Any, Position]]:
        """Yield (record, position after it) from ``start``. A malformed line goes to ``on_malformed``
        and is skipped, or, without one, raises MalformedRecordError."""

    def bytes_at(self, position: Mapping[str, int]) -> int:
        """Source bytes before ``position`` (progress and batch sizes)."""

    def total_bytes(self) -> int: ...

    def record_key(self, position_after: Mapping[str, int]) -> str:
        """Where the record that ends at ``position_after`` is, for the de-duplication key."""


class _FileReader:
    format: IngestFormat

    def __init__(self, path: str | os.PathLike[str], uri: str | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.name = uri or self.path
        self._uri = uri

    def identity(self) -> SourceIdentity:
        try:
            return SourceIdentity.of_file(self.path, self._uri)
        except FileNotFoundError:
            raise SourceChangedError(f"source {self.name} does not exist") from None

    def ensure_unchanged(self, identity: SourceIdentity) -> None:
        why = identity.difference(self.identity())
        if why:
            raise SourceChangedError(f"{why} during the ingest of {self.name}")

    def total_bytes(self) -> int:
        return os.stat(self.path).st_size

    def _check_offset(self, offset: int) -> None:
        size = self.total_bytes()
        if offset > size:
            raise SourceChangedError(f"{self.name} has {size} bytes, fewer than the position {offset}")


def _malformed(on_malformed: OnMalformed | None, err: MalformedRecordError) -> None:
    if on_malformed is None:
        raise err
    on_malformed(err)


class JsonLinesReader(_FileReader):
    """JSON Lines: one JSON object per line; blank lines are skipped. Position: byte offset and lines read.

    ``as_text`` yields each valid line as its JSON text instead of a dict: a JSON stream then sends the
    source's own text, with no ``json.dumps`` of every record in the SDK (the line is still parsed, to
    refuse a malformed one with its line number). Measured into the Zerobus emulator: the dict path ran
    at 0.64x the SDK fed with the file's lines. A ``dedupe_key`` needs dicts (it adds a field).
    """

    format: IngestFormat = "jsonl"

    def __init__(
        self, path: str | os.PathLike[str], uri: str | None = None, *, as_text: bool = False
    ) -> None:
        super().__init__(path, uri)
        self.as_text = as_text

    def start(self) -> Position:
        return {"byte": 0, "line": 0}

    def read(
        self, start: Mapping[str, int] | None = None, on_malformed: OnMalformed | None = None
    ) -> Iterator[tuple[Any, Position]]:
        pos = start or self.start()
        byte, line = pos["byte"], pos["line"]
        self._check_offset(byte)
        with open(self.path, "rb") as f:
            f.seek(byte)
            for raw in f:
                byte += len(raw)
                line += 1
                after = {"byte": byte, "line": line}
                text = raw.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except ValueError as err:
                    _malformed(on_malformed, self._bad(line, f"not valid JSON ({err})", raw, after))
                    continue
                if not isinstance(record, dict):
                    what = type(record).__name__
                    _malformed(on_malformed, self._bad(line, f"not a JSON object (a {what})", raw, after))
                    continue
                yield (text.decode("utf-8") if self.as_text else record), after

    def _bad(self, line: int, error: str, raw: bytes, after: Position) -> MalformedRecordError:
        return MalformedRecordError(
            self.name, line, error, raw.decode("utf-8", "replace").rstrip("\r\n"), after
        )

    def bytes_at(self, position: Mapping[str, int]) -> int:
        return position["byte"]

    def record_key(self, position_after: Mapping[str, int]) -> str:
        return str(position_after["line"])


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "t", "yes", "y", "1"):
        return True
    if low in ("false", "f", "no", "n", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


CSV_TYPES: Mapping[str, Callable[[str], Any]] = {
    "str": str,
    "string": str,
    "int": int,
    "integer": int,
    "long": int,
    "bigint": int,
    "float": float,
    "double": float,
    "bool": _parse_bool,
    "boolean": _parse_bool,
    "json": json.loads,
}


class _Lines:
    """Feeds csv.reader one physical line at a time and counts the bytes and lines it took: the csv
    module reads no further than the row it returns, so after each row this is the exact position."""

    def __init__(self, f: IO[bytes], byte: int, line: int, encoding: str) -> None:
        self.f, self.byte, self.line, self.encoding = f, byte, line, encoding

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        first = self.byte == 0
        self.byte += len(raw)
        self.line += 1
        return raw.decode("utf-8-sig" if first and self.encoding == "utf-8" else self.encoding)


class CsvReader(_FileReader):
    """CSV with a header row (or ``columns``); values are text unless ``types`` names a column's type
    (str, int, float, bool, json; an empty value of a typed column is null). Position: byte offset and
    data rows read."""

    format: IngestFormat = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        delimiter: str = ",",
        header: bool = True,
        types: Mapping[str, str] | None = None,
        *,
        columns: Sequence[str] | None = None,
        encoding: str = "utf-8",
        uri: str | None = None,
    ) -> None:
        super().__init__(path, uri)
        if not header and not columns:
            raise ValueError("a CSV file without a header row needs columns=")
        unknown = {t for t in (types or {}).values() if t.lower() not in CSV_TYPES}
        if unknown:
            raise ValueError(f"unknown CSV column types {sorted(unknown)}; known: {sorted(CSV_TYPES)}")
        self.delimiter = delimiter
        self.header = header
        self.columns = list(columns) if columns else None
        self.types = {k: CSV_TYPES[v.lower()] for k, v in (types or {}).items()}
        self.encoding = encoding

    def start(self) -> Position:
        return {"byte": 0, "row": 0}

    def _rows(self, lines: _Lines) -> Iterator[list[str]]:
        return csv.reader(lines, delimiter=self.delimiter, strict=True)

    def _header(self) -> tuple[list[str], int, int]:
        """Column names, and the byte and line just after the header row."""
        with open(self.path, "rb") as f:
            lines = _Lines(f, 0, 0, self.encoding)
            names: list[str] | None = None
            try:
                names = next(self._rows(lines), None)
            except (csv.Error, UnicodeDecodeError) as err:
                raise MalformedRecordError(self.name, 1, f"unreadable header row ({err})", "", {}) from err
            if not names:
                raise MalformedRecordError(self.name, 1, "no header row", "", {})
            if len(set(names)) != len(names) or not all(names):
                raise MalformedRecordError(
                    self.name, 1, f"header has empty or repeated column names: {names}", "", {}
                )
            return self.columns or names, lines.byte, lines.line

    def read(
        self, start: Mapping[str, int] | None = None, on_malformed: OnMalformed | None = None
    ) -> Iterator[tuple[Any, Position]]:
        pos = start or self.start()
        byte, row = pos["byte"], pos["row"]
        self._check_offset(byte)
        names = self.columns or []
        line = 0
        if self.header:
            names, header_end, header_lines = self._header()
            if byte < header_end:
                byte, line = header_end, header_lines
        with open(self.path, "rb") as f:
            if byte and not line:
                line = _count_lines(f, byte)  # for line numbers in messages after a resume
            f.seek(byte)
            lines = _Lines(f, byte, line, self.encoding)
            rows = self._rows(lines)
            while True:
                first_line = lines.line + 1
                try:
                    values = next(rows)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as err:
                    row += 1
                    after = {"byte": lines.byte, "row": row}
                    _malformed(on_malformed, self._bad(first_line, row, str(err), "", after))
                    continue
                if not values:
                    continue  # a blank line
                row += 1
                after = {"byte": lines.byte, "row": row}
                if len(values) != len(names):
                    error = f"expected {len(names)} fields, got {len(values)}"
                    _malformed(on_malformed, self._bad(first_line, row, error, self._raw(values), after))
                    continue
                record: dict[str, Any] = dict(zip(names, values, strict=True))
                try:
                    for column, convert in self.types.items():
                        text = record.get(column)
                        if text is not None:
                            record[column] = None if text == "" and convert is not str else convert(text)
                except ValueError as err:
                    error = f"column {column!r}: {err}"
                    _malformed(on_malformed, self._bad(first_line, row, error, self._raw(values), after))
                    continue
                yield record, after

    def _raw(self, values: list[str]) -> str:
        return self.delimiter.join(values)

    def _bad(self, line: int, row: int, error: str, raw: str, after: Position) -> MalformedRecordError:
        return MalformedRecordError(self.name, line, error, raw, after, row=row)

    def bytes_at(self, position: Mapping[str, int]) -> int:
        return position["byte"]

    def record_key(self, position_after: Mapping[str, int]) -> str:
        return str(position_after["row"])


def _count_lines(f: IO[bytes], end: int) -> int:
    f.seek(0)
    count, left = 0, end
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def _json_safe(value: Any) -> Any:
    """Arrow values as the Zerobus JSON form takes them: timestamps as epoch microseconds, dates as
    epoch days, decimals as text, binary as base64."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days
    if isinstance(value, dt.time):
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


class ParquetReader(_FileReader):
    """Parquet through pyarrow, one row group at a time in batches. Position: row group and the rows
    of it read. Needs ``pyarrow`` (the ``zerobus-emulator`` extra brings it)."""

    format: IngestFormat = "parquet"

    def __init__(
        self, path: str | os.PathLike[str], *, batch_rows: int = 10_000, uri: str | None = None
    ) -> None:
        super().__init__(path, uri)
        self.batch_rows = batch_rows
        self._sizes: list[tuple[int, int]] | None = None  # per row group: (rows, uncompressed bytes)
        self._starts: list[int] | None = None

    def _open(self) -> Any:
        try:
            import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency
        except ImportError as err:
            raise FatalError("reading Parquet needs pyarrow: pip install pyarrow") from err
        try:
            return pq.ParquetFile(self.path)
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise MalformedRecordError(self.name, 0, f"not a readable Parquet file ({err})", "", {}) from err

    def _group_sizes(self) -> list[tuple[int, int]]:
        if self._sizes is None:
            md = self._open().metadata
            groups = (md.row_group(g) for g in range(md.num_row_groups))
            self._sizes = [(rg.num_rows, rg.total_byte_size) for rg in groups]
        return self._sizes

    def start(self) -> Position:
        return {"row_group": 0, "row": 0}

    def read(
        self, start: Mapping[str, int] | None = None, on_malformed: OnMalformed | None = None
    ) -> Iterator[tuple[Any, Position]]:
        import pyarrow as pa  # noqa: PLC0415 - optional dependency

        pos = start or self.start()
        pf = self._open()
        sizes = self._group_sizes()
        first, skip = pos["row_group"], pos["row"]
        if (
            first > len(sizes)
            or (first < len(sizes) and skip > sizes[first][0])
            or (first == len(sizes) and skip)
        ):
            raise SourceChangedError(f"{self.name} has no row {skip} in row group {first}")
        plain = all(_plain_arrow(f.type, pa) for f in pf.schema_arrow)
        for group in range(first, len(sizes)):
            row = 0
            to_skip = skip if group == first else 0
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[group]):
                if row + batch.num_rows <= to_skip:
                    row += batch.num_rows
                    continue
                if row < to_skip:
                    batch = batch.slice(to_skip - row)  # noqa: PLW2901
                    row = to_skip
                for record in batch.to_pylist():
                    row += 1
                    yield (record if plain else _json_safe(record)), {"row_group": group, "row": row}

    def bytes_at(self, position: Mapping[str, int]) -> int:
        """Uncompressed bytes, a row's share of its group estimated as the group's average."""
        sizes = self._group_sizes()
        if self._starts is None:
            self._starts = [0]
            for _, size in sizes:
                self._starts.append(self._starts[-1] + size)
        group, row = position["row_group"], position["row"]
        done = self._starts[min(group, len(sizes))]
        if group < len(sizes) and sizes[group][0]:
            rows, size = sizes[group]
            done += size * row // rows
        return done

    def total_bytes(self) -> int:
        return sum(size for _, size in self._group_sizes())

    def record_key(self, position_after: Mapping[str, int]) -> str:
        return f"{position_after['row_group']}.{position_after['row'] - 1}"


def _plain_arrow(t: Any, pa: Any) -> bool:
    """Does ``to_pylist`` give JSON-ready values for this Arrow type?"""
    types = pa.types
    return bool(
        types.is_integer(t)
        or types.is_floating(t)
        or types.is_boolean(t)
        or types.is_string(t)
        or types.is_large_string(t)
        or types.is_null(t)
    )


def _canonical(record: Any) -> bytes:
    if isinstance(record, bytes | bytearray | memoryview):
        return bytes(record)
    if isinstance(record, str):
        return record.encode("utf-8")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


class RecordsReader:
    """Records held in memory (from XCom or a callable). Identified by their count and a SHA-256 of
    their content, so a retry with different records does not resume the old position."""

    format: IngestFormat = "records"

    def __init__(self, records: Sequence[Any], *, uri: str = "records://") -> None:
        self.records = records
        self.name = uri
        self._ends: list[int] | None = None
        self._digest: str | None = None

    def _scan(self) -> list[int]:
        if self._ends is None:
            digest = hashlib.sha256()
            ends, total = [0], 0
            for record in self.records:
                data = _canonical(record)
                digest.update(len(data).to_bytes(8, "big"))
                digest.update(data)
                total += len(data)
                ends.append(total)
            self._ends, self._digest = ends, digest.hexdigest()
        return self._ends

    def identity(self) -> SourceIdentity:
        self._scan()
        return SourceIdentity(self.name, len(self.records), None, self._digest)

    def ensure_unchanged(self, identity: SourceIdentity) -> None:
        if len(self.records) != identity.size:
            raise SourceChangedError(f"the records of {self.name} changed during the ingest")

    def start(self) -> Position:
        return {"index": 0}

    def read(
        self, start: Mapping[str, int] | None = None, on_malformed: OnMalformed | None = None
    ) -> Iterator[tuple[Any, Position]]:
        first = (start or self.start())["index"]
        if first > len(self.records):
            raise SourceChangedError(f"{self.name} has {len(self.records)} records, fewer than {first}")
        for index in range(first, len(self.records)):
            yield self.records[index], {"index": index + 1}

    def bytes_at(self, position: Mapping[str, int]) -> int:
        return self._scan()[position["index"]]

    def total_bytes(self) -> int:
        return self._scan()[-1]

    def record_key(self, position_after: Mapping[str, int]) -> str:
        return str(position_after["index"] - 1)


EXTENSIONS: Mapping[str, IngestFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def reader_for(
    path: str | os.PathLike[str], format: str | None = None, *, uri: str | None = None, **options: Any
) -> RecordReader:
    """A reader for ``path`` by ``format`` or, without one, by extension (.jsonl/.ndjson/.json, .csv/.tsv,
    .parquet/.pq). ``options`` go to the reader (CSV: delimiter, header, types, columns)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    fmt = format or EXTENSIONS.get(ext)
    if fmt == "jsonl":
        return JsonLinesReader(path, uri=uri, **options)
    if fmt == "csv":
        if ext == ".tsv":
            options.setdefault("delimiter", "\t")
        return CsvReader(path, uri=uri, **options)
    if fmt == "parquet":
        return ParquetReader(path, uri=uri, **options)
    if format:
        raise ValueError(f"unknown source format {format!r}; use jsonl, csv or parquet")
    raise ValueError(f"cannot tell the format of {os.fspath(path)} by its extension; pass format=")


class DeadLetter:
    """Malformed lines as JSON Lines ({"source", "line", "error", "raw"}, plus "row" for CSV).

    A retry reads the same bad lines again: entries already in the file (from this run or an earlier
    try) are not written twice, so the file holds each bad line once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.written = 0
        self._seen: set[tuple[str, int]] = set()
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            torn = False
            if os.path.exists(self.path):
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    for text in f:
                        torn = not text.endswith("\n")
                        try:
                            entry = json.loads(text)
                            self._seen.add((str(entry["source"]), int(entry["line"])))
                        except (ValueError, KeyError, TypeError):
                            continue  # a torn last line of a killed try
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if torn:
                self._file.write("\n")
        return self._file

    def write(self, err: MalformedRecordError) -> bool:
        """Record ``err``'s line; False when the file already has it."""
        f = self._open()
        if (err.source, err.line) in self._seen:
            return False
        entry: dict[str, Any] = {"source": err.source, "line": err.line, "error": err.error, "raw": err.raw}
        if err.row is not None:
            entry["row"] = err.row
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._seen.add((err.source, err.line))
        self.written += 1
        return True

    def flush(self) -> None:
        """To the OS (a killed process loses nothing then): called before a checkpoint passes the line."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class IngestOptions:
    """``batch_bytes`` counts source bytes (and the size of text or protobuf records after ``convert``);
    keep it well under the SDK's 10,420,224-byte limit per call, as JSON of a CSV row can be larger
    than the row."""

    batch_records: int = 1000
    batch_bytes: int = 4 * MiB
    # Each flush waits for the server's acknowledgement (a commit) while nothing else is sent: into the
    # emulator, 1M records of ~200 B went at 0.66-0.73x the SDK's own rate (no flush until the end) with
    # a flush every 10 batches of 1000, and at 1.00x with one every 100. The duplicates window a killed
    # try leaves is at most this many batches (or flush_interval_s of records, whichever comes first).
    flush_every_batches: int = 100
    flush_interval_s: float = 5.0
    dedupe_key: str | None = None
    dead_letter_path: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # reconnects across the whole ingest; None: 20
    max_total_retries: int | None = None
    progress_interval_s: float = 10.0
    # at most one checkpoint write per interval (0: after every flush); a longer interval widens the
    # window of records a killed try sends again
    checkpoint_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_records < 1 or self.batch_bytes < 1 or self.flush_every_batches < 1:
            raise ValueError("batch_records, batch_bytes and flush_every_batches must be >= 1")
        if self.flush_interval_s < 0 or self.checkpoint_interval_s < 0 or self.progress_interval_s < 0:
            raise ValueError("intervals must be >= 0")
        if self.max_total_retries is not None and self.max_total_retries < 0:
            raise ValueError("max_total_retries must be >= 0")
        if self.dedupe_key is not None and not self.dedupe_key:
            raise ValueError("dedupe_key must be a column name")


@dataclass(frozen=True)
class IngestResult:
    table: str
    source: str
    format: str
    records: int  # acknowledged for this source, earlier tries included
    batches: int
    records_resumed: int  # acknowledged by earlier tries, not sent in this one
    records_sent: int  # sent in this try, resends included
    resent_records: int  # sent again after a broken stream (maybe duplicates)
    resumed_from: Mapping[str, int] | None
    duplicates_window_records: int  # the most records at any moment a crash would have sent again
    dead_lettered: int
    retries: int
    seconds: float
    bytes_read: int  # source bytes read in this try (net of resends)
    restarted_reason: str | None = None

    @property
    def records_per_s(self) -> float:
        new = self.records - self.records_resumed
        return new / self.seconds if self.seconds > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return throughput_mib_per_s(self.bytes_read, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source": self.source,
            "format": self.format,
            "records": self.records,
            "batches": self.batches,
            "records_resumed": self.records_resumed,
            "records_sent": self.records_sent,
            "resent_records": self.resent_records,
            "resumed_from": dict(self.resumed_from) if self.resumed_from is not None else None,
            "duplicates_window_records": self.duplicates_window_records,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 1),
            "mib_per_s": round(self.mib_per_s, 2),
            "bytes_read": self.bytes_read,
            "restarted_reason": self.restarted_reason,
        }


@dataclass(frozen=True)
class IngestProgressEvent(ProgressEvent):
    """A ProgressEvent (so ``log_progress`` prints it) that counts acknowledged records."""

    records_done: int = 0
    records_resumed: int = 0
    batches_done: int = 0  # acknowledged batches, the earlier tries' included
    batches_resumed: int = 0

    @property
    def records_per_s(self) -> float:
        sent = self.records_done - self.records_resumed
        return sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        eta = "--" if self.eta_s is None else _duration(self.eta_s)
        return (
            f"{self.label}: {self.percent:5.1f}% ({self.records_done:,} records acknowledged, "
            f"{_size(self.bytes_done)} of {_size(self.bytes_total)}) {self.records_per_s:,.0f} records/s, "
            f"{self.rate_bps / MiB:.1f} MiB/s, ETA {eta}"
        )


class _Progress:
    """Progress at acknowledged positions: the shared ProgressTracker (throttling, rate, ETA) counts the
    bytes; its events go out as IngestProgressEvents carrying the record counts."""

    def __init__(
        self,
        label: str,
        bytes_total: int,
        subscribers: Sequence[Subscriber],
        interval_s: float,
        started: float,
        bytes_resumed: int,
        records_resumed: int,
        batches_resumed: int = 0,
    ) -> None:
        self.subscribers = list(subscribers)
        self.records_done = self.records_resumed = records_resumed
        self.batches_done = self.batches_resumed = batches_resumed
        self._bytes = bytes_resumed
        self._tracker = ProgressTracker(
            label,
            bytes_total,
            0,
            subscribers=[self._relay_to(s) for s in self.subscribers],
            interval_s=interval_s,
            unit="record",
            started=started,
        )
        self._tracker.resumed(bytes_resumed)

    def acked(self, records: int, nbytes: int, batches: int | None = None) -> None:
        self.records_done = records
        if batches is not None:
            self.batches_done = batches
        delta, self._bytes = nbytes - self._bytes, nbytes
        self._tracker.add(delta)

    def finish(self) -> IngestProgressEvent:
        return self._with_records(self._tracker.finish())

    def _with_records(self, event: ProgressEvent) -> IngestProgressEvent:
        base = {f.name: getattr(event, f.name) for f in fields(ProgressEvent)}
        return IngestProgressEvent(
            **base,
            records_done=self.records_done,
            records_resumed=self.records_resumed,
            batches_done=self.batches_done,
            batches_resumed=self.batches_resumed,
        )

    def _relay_to(self, subscriber: Subscriber) -> Subscriber:
        """Each subscriber hears IngestProgressEvents, paced by its own interval if it has one."""

        def relay(event: ProgressEvent) -> None:
            subscriber(self._with_records(event))

        interval = getattr(subscriber, "interval_s", None)
        if interval is not None:
            relay.interval_s = interval  # type: ignore[attr-defined]
        attach = getattr(subscriber, "attach", None)
        if callable(attach):  # it peeks at this (record-counting) progress, not at the bare tracker
            relay.attach = lambda _tracker: attach(self)  # type: ignore[attr-defined]
        return relay

    def peek(self, wait_s: float = 1.0) -> IngestProgressEvent | None:
        event = self._tracker.peek(wait_s)
        return None if event is None else self._with_records(event)


@dataclass
class _Acked:
    """The state at a position: what a checkpoint there says."""

    position: Position
    records: int
    batches: int
    dead: int


@dataclass
class _Sent:
    """A batch sent and not yet flushed: where it ends and the counts up to there."""

    position: Position
    records: int
    dead: int


class Ingester:
    """Ingest one source into one table through streams from ``open_sink``, resumable by position."""

    def __init__(
        self,
        open_sink: Callable[[], RecordSink],
        reader: RecordReader,
        options: IngestOptions | None = None,
        *,
        table: str,
        sink: IngestCheckpointSink | None = None,
        subscribers: Sequence[Subscriber] | None = None,
        source: SourceIdentity | None = None,
        convert: Callable[[Any], Any] | None = None,
        kind: str = "zerobus.ingest",
    ) -> None:
        """``sink`` keeps checkpoints; ``source`` overrides the reader's identity (e.g. a Volume file
        downloaded to a temp path: its ``/Volumes`` URI and remote version); ``convert`` turns each
        record into what the stream takes (protobuf bytes, JSON text), after the dedupe key is set."""
        self.open_sink = open_sink
        self.reader = reader
        self.options = options or IngestOptions()
        self.table = table
        self.checkpoints: IngestCheckpointSink = sink or NullSink()
        self.subscribers = list(subscribers or [])
        self.source = source
        self.convert = convert
        self.kind = kind
        self._stop = threading.Event()
        self._stream: RecordSink | None = None
        self._dead_letter = (
            DeadLetter(self.options.dead_letter_path) if self.options.dead_letter_path else None
        )
        self._retries = 0

    def cancel(self) -> None:
        """Stop at the next batch (a send blocked on the server finishes first); the checkpoint stays."""
        self._stop.set()

    def run(self, checkpoint: IngestCheckpoint | None = None) -> IngestResult:
        """Ingest to the end, resuming after ``checkpoint`` when it still describes this ingest."""
        started = time.monotonic()
        identity = self.source or self.reader.identity()
        checkpoint, restarted = self._usable(checkpoint, identity)
        if checkpoint is not None:
            acked = _Acked(
                dict(checkpoint.position),
                checkpoint.records_acked,
                checkpoint.batches_acked,
                checkpoint.dead_lettered,
            )
            log.info(
                "Resuming the ingest of %s into %s after %s (%d records acknowledged by earlier tries)",
                self.reader.name,
                self.table,
                acked.position,
                acked.records,
            )
        else:
            acked = _Acked(self.reader.start(), 0, 0, 0)
        job = _Job(self, identity, acked, started)
        try:
            job.run()
        finally:
            self._drop_stream()
            if self._dead_letter is not None:
                self._dead_letter.close()
        final = job.progress.finish()
        return IngestResult(
            table=self.table,
            source=identity.uri,
            format=self.reader.format,
            records=job.acked.records,
            batches=job.acked.batches,
            records_resumed=job.resumed.records,
            records_sent=job.records_sent,
            resent_records=job.resent,
            resumed_from=dict(job.resumed.position) if checkpoint is not None else None,
            duplicates_window_records=job.window,
            dead_lettered=job.acked.dead,
            retries=self._retries,
            seconds=final.elapsed_s,
            bytes_read=self.reader.bytes_at(job.acked.position) - self.reader.bytes_at(job.resumed.position),
            restarted_reason=restarted,
        )

    def _usable(
        self, checkpoint: IngestCheckpoint | None, identity: SourceIdentity
    ) -> tuple[IngestCheckpoint | None, str | None]:
        if checkpoint is None:
            return None, None
        why: str | None = None
        if checkpoint.kind != self.kind:
            why = f"checkpoint is a {checkpoint.kind!r}, not a {self.kind!r}"
        elif checkpoint.table != self.table:
            why = f"checkpoint is for table {checkpoint.table}, not {self.table}"
        elif checkpoint.source.uri != identity.uri:
            why = f"checkpoint is for {checkpoint.source.uri}, not {identity.uri}"
        elif checkpoint.format != self.reader.format:
            why = f"checkpoint is for a {checkpoint.format} source, not {self.reader.format}"
        if why:
            log.warning("Not resuming the ingest of %s: %s. Starting from the beginning.", identity.uri, why)
            return None, why
        changed = checkpoint.validate_for(self.table, identity)
        if changed:
            raise SourceChangedError(
                f"{changed} since the checkpoint of the ingest of {identity.uri} into {self.table} "
                f"({checkpoint.records_acked} records acknowledged up to {dict(checkpoint.position)}); "
                "positions in another version mean nothing and starting over would send the "
                "acknowledged records again. Clear the checkpoint to ingest this version from the start."
            )
        return checkpoint, None

    def _open_stream(self, budget: RecoveryBudget) -> RecordSink:
        if self._stream is None:

            def counted(attempt: int, err: RetryableError, delay: float) -> None:
                self._retries += 1
                log.warning("Opening a stream to %s failed (%s); again in %.1f s", self.table, err, delay)

            self._stream = call_with_retry(
                self.open_sink, self.options.retry, budget=budget, cancel=self._stop, on_retry=counted
            )
        return self._stream

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as err:  # noqa: BLE001 - a broken stream often fails to close too
                log.info("Closing the stream to %s: %s", self.table, err)


class _Job:
    """One run's state: the acknowledged position, the batches in flight, the counters."""

    def __init__(self, ingester: Ingester, identity: SourceIdentity, acked: _Acked, started: float) -> None:
        self.ing = ingester
        self.opts = ingester.options
        self.reader = ingester.reader
        self.identity = identity
        # what the reader itself reads (a temp copy when ``identity`` names a downloaded Volume file)
        self.read_identity = identity if ingester.source is None else self.reader.identity()
        self.acked = acked
        self.resumed = _Acked(dict(acked.position), acked.records, acked.batches, acked.dead)
        self.saved = self.resumed  # what the checkpoint store holds
        self.last_save = float("-inf")
        self.inflight: list[_Sent] = []  # sent, not flushed
        self.records_sent = 0
        self.resent = 0
        self.window = 0
        self.dead = acked.dead
        self.key_prefix = identity.key_prefix() if self.opts.dedupe_key else ""
        self.progress = _Progress(
            f"ingest {self.reader.name} -> {ingester.table}",
            self.reader.total_bytes(),
            ingester.subscribers,
            self.opts.progress_interval_s,
            started,
            self.reader.bytes_at(acked.position),
            acked.records,
            acked.batches,
        )
        total = self.opts.max_total_retries
        self.budget = RecoveryBudget(20 if total is None else total)
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets

    def run(self) -> None:
        failures = 0  # consecutive broken streams without an acknowledged flush between them
        while True:
            try:
                self._stream_to_end()
                break
            except RetryableError as err:
                self.ing._drop_stream()
                unacked = self.acked_if_flushed().records - self.acked.records
                self.resent += unacked
                self.inflight.clear()
                failures = 1 if self._progressed else failures + 1
                if failures >= self.opts.retry.max_attempts:
                    raise RetryBudgetExceeded(
                        f"the stream to {self.ing.table} broke {failures} times without progress: {err}",
                        last_error=err,
                    ) from err
                self.budget.spend(err)
                delay = self.opts.retry.delay_s(failures, err, self.rng)
                self.ing._retries += 1
                log.warning(
                    "The stream to %s broke (%s); reopening in %.1f s and sending again from %s "
                    "(%d records sent and not acknowledged)",
                    self.ing.table,
                    err,
                    delay,
                    self.acked.position,
                    unacked,
                )
                if self.ing._stop.wait(delay):
                    raise Cancelled("ingest cancelled") from err
        self._save(force=True)
        self.ing._drop_stream()
        self.ing.checkpoints.clear()

    def acked_if_flushed(self) -> _Acked:
        if not self.inflight:
            return self.acked
        last = self.inflight[-1]
        return _Acked(last.position, last.records, self.acked.batches + len(self.inflight), last.dead)

    def _on_malformed(self, err: MalformedRecordError) -> None:
        assert self.ing._dead_letter is not None
        self.ing._dead_letter.write(err)
        self.dead += 1
        log.warning("Dead-lettered %s", err)

    def _stream_to_end(self) -> None:
        self._progressed = False
        opts, reader, convert, key = self.opts, self.reader, self.ing.convert, self.opts.dedupe_key
        self.dead = self.acked.dead
        on_malformed = self._on_malformed if self.ing._dead_letter is not None else None
        batch: list[Any] = []
        records = self.acked.records
        batch_start = reader.bytes_at(self.acked.position)
        payload = 0
        position: Position = self.acked.position
        last_flush = time.monotonic()
        for record, position in reader.read(self.acked.position, on_malformed):
            if key is not None:
                if not isinstance(record, dict):
                    raise FatalError(
                        f"dedupe_key needs records that are objects, not {type(record).__name__}"
                    )
                record = {**record, key: f"{self.key_prefix}:{reader.record_key(position)}"}  # noqa: PLW2901
            if convert is not None:
                record = convert(record)  # noqa: PLW2901
                if isinstance(record, bytes | str):
                    payload += len(record)
            batch.append(record)
            records += 1
            if len(batch) >= opts.batch_records or max(payload, reader.bytes_at(position) - batch_start) >= (
                opts.batch_bytes
            ):
                self._send(batch, position, records)
                batch, payload, batch_start = [], 0, reader.bytes_at(position)
                if len(self.inflight) >= opts.flush_every_batches or (
                    time.monotonic() - last_flush >= opts.flush_interval_s
                ):
                    self._flush()
                    last_flush = time.monotonic()
        if batch:
            self._send(batch, position, records)
        self._flush()
        # malformed lines after the last record: the end is acknowledged too
        self.acked = _Acked(dict(position), self.acked.records, self.acked.batches, self.dead)

    def _send(self, batch: list[Any], position: Position, records: int) -> None:
        if self.ing._stop.is_set():
            raise Cancelled("ingest cancelled")
        stream = self.ing._open_stream(self.budget)
        self.inflight.append(_Sent(position, records, self.dead))
        self.records_sent += len(batch)
        self.window = max(self.window, records - self.saved.records)
        stream.send(batch)

    def _flush(self) -> None:
        if not self.inflight:
            return
        assert self.ing._stream is not None
        self.ing._stream.flush()
        self.acked = self.acked_if_flushed()
        self.inflight.clear()
        self._progressed = True
        self.progress.acked(self.acked.records, self.reader.bytes_at(self.acked.position), self.acked.batches)
        self.reader.ensure_unchanged(self.read_identity)
        self._save()

    def _save(self, force: bool = False) -> None:
        if self.acked == self.saved:
            return
        now = time.monotonic()
        if not force and now - self.last_save < self.opts.checkpoint_interval_s:
            return
        if self.ing._dead_letter is not None:
            self.ing._dead_letter.flush()
        checkpoint = IngestCheckpoint(
            table=self.ing.table,
            source=self.identity,
            format=self.reader.format,
            position=dict(self.acked.position),
            records_acked=self.acked.records,
            batches_acked=self.acked.batches,
            dead_lettered=self.acked.dead,
            kind=self.ing.kind,
        )
        self.ing.checkpoints.save(checkpoint, frozenset())
        self.saved = _Acked(
            dict(self.acked.position), self.acked.records, self.acked.batches, self.acked.dead
        )
        self.last_save = now
