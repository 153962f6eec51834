"""Source readers of the ingest engine: exact positions (a resume from any of them reads exactly the
rest), precise error positions, the dead-letter file, and choosing a reader by extension."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_databricks_transfer.engine.errors import SourceChangedError
from airflow_databricks_transfer.engine.ingest import (
    CsvReader,
    DeadLetter,
    JsonLinesReader,
    MalformedRecordError,
    ParquetReader,
    RecordReader,
    RecordsReader,
    reader_for,
)


def _jsonl(tmp_path: Path) -> RecordReader:
    path = tmp_path / "e.jsonl"
    lines = [json.dumps({"id": i, "name": f"n{i}", "text": "é" * (i % 3)}) for i in range(7)]
    lines.insert(3, "   ")  # a blank line is skipped but counted
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return JsonLinesReader(path)


def _csv(tmp_path: Path) -> RecordReader:
    path = tmp_path / "e.csv"
    path.write_bytes(
        b'\xef\xbb\xbfid,name,score\n1,a,1.5\n2,"two\nlines",\n\n3,"q""uote",3\n4,d,4.25\n5,e,5\n'
    )
    return CsvReader(path, types={"id": "int", "score": "float"})


def _parquet(tmp_path: Path) -> RecordReader:
    path = tmp_path / "e.parquet"
    table = pa.table({"id": list(range(10)), "name": [f"n{i}" for i in range(10)]})
    pq.write_table(table, path, row_group_size=4)
    return ParquetReader(path, batch_rows=3)


def _records(tmp_path: Path) -> RecordReader:
    return RecordsReader([{"id": i} for i in range(5)])


READERS: dict[str, Callable[[Path], RecordReader]] = {
    "jsonl": _jsonl,
    "csv": _csv,
    "parquet": _parquet,
    "records": _records,
}


@pytest.mark.parametrize("make", READERS.values(), ids=READERS.keys())
def test_a_resume_from_any_position_reads_exactly_the_rest(make: Any, tmp_path: Path) -> None:
    reader = make(tmp_path)
    everything = list(reader.read())
    assert len(everything) >= 5
    for i, (_, position) in enumerate(everything):
        rest = [record for record, _ in reader.read(position)]
        assert rest == [record for record, _ in everything[i + 1 :]], position
    assert [r for r, _ in reader.read(reader.start())] == [r for r, _ in everything]
    # progress bytes only grow, and the end is the whole source
    sizes = [reader.bytes_at(p) for _, p in everything]
    assert sizes == sorted(sizes)
    assert sizes[-1] == reader.total_bytes()
    keys = [reader.record_key(p) for _, p in everything]
    assert len(set(keys)) == len(keys)


def test_jsonl_positions_are_byte_offsets_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a":1}\r\n\n{"a":"\xc3\xa9"}')  # CRLF, a blank line, no final newline
    got = list(JsonLinesReader(path).read())
    assert got == [({"a": 1}, {"byte": 9, "line": 1}), ({"a": "é"}, {"byte": 20, "line": 3})]


@pytest.mark.parametrize(
    ("content", "line", "error"),
    [
        (b'{"a":1}\n{"a":\n{"a":3}\n', 2, "not valid JSON"),
        (b'{"a":1}\n\n[1, 2]\n', 3, "not a JSON object (a list)"),
        (b'{"a":1}\n\xff\xfe\n', 2, "not valid JSON"),
    ],
)
def test_a_malformed_json_line_names_file_and_line(
    tmp_path: Path, content: bytes, line: int, error: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(MalformedRecordError, match=rf"^{re.escape(f'{path}:{line}: {error}')}") as info:
        list(JsonLinesReader(path).read())
    assert info.value.line == line


def test_malformed_lines_go_to_the_callback_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a":1}\nnope\n{"a":3}\n"str"\n')
    bad: list[MalformedRecordError] = []
    got = list(JsonLinesReader(path).read(on_malformed=bad.append))
    assert got == [({"a": 1}, {"byte": 8, "line": 1}), ({"a": 3}, {"byte": 21, "line": 3})]
    assert [(e.line, e.raw, e.position_after) for e in bad] == [
        (2, "nope", {"byte": 13, "line": 2}),
        (4, '"str"', {"byte": 27, "line": 4}),
    ]


def test_csv_values_types_and_positions(tmp_path: Path) -> None:
    got = list(_csv(tmp_path).read())
    assert [r for r, _ in got] == [
        {"id": 1, "name": "a", "score": 1.5},
        {"id": 2, "name": "two\nlines", "score": None},
        {"id": 3, "name": 'q"uote', "score": 3.0},
        {"id": 4, "name": "d", "score": 4.25},
        {"id": 5, "name": "e", "score": 5.0},
    ]
    assert [p["row"] for _, p in got] == [1, 2, 3, 4, 5]
    content = (tmp_path / "e.csv").read_bytes()
    # each position is the end of its row's last line
    assert [content[: p["byte"]].endswith(b"\n") for _, p in got] == [True] * 5
    assert got[1][1]["byte"] == content.index(b'lines",\n') + len(b'lines",\n')


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"id,name\n1,a\n2\n", r":3 \(row 2\): expected 2 fields, got 1"),
        (b"id,name\n1,a\n\nx,b\n", r":4 \(row 2\): column 'id': invalid literal for int"),
        (b'id,name\n1,"a\nb",\n', r":2 \(row 1\): expected 2 fields, got 3"),
        (b'id,name\n1,"a"b\n', r":2 \(row 1\): ',' expected after '\"'"),
    ],
)
def test_a_malformed_csv_row_names_file_line_and_row(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(MalformedRecordError, match=message):
        list(CsvReader(path, types={"id": "int"}).read())


def test_csv_after_a_resume_still_names_the_right_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('id,name\n1,"a\nb"\n2,c\n3\n')
    reader = CsvReader(path)
    first = next(iter(reader.read()))
    with pytest.raises(MalformedRecordError, match=r":5 \(row 3\): expected 2 fields"):
        list(reader.read(first[1]))


def test_csv_without_header_needs_columns_and_tsv_is_chosen_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text("1\tx\n2\ty\n")
    with pytest.raises(ValueError, match="needs columns"):
        CsvReader(path, header=False)
    with pytest.raises(ValueError, match="unknown CSV column types"):
        CsvReader(path, types={"a": "money"})
    reader = reader_for(path, header=False, columns=["id", "v"], types={"id": "int"})
    assert [r for r, _ in reader.read()] == [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}]


def test_a_bad_csv_header_is_fatal_even_with_a_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,id\n1,2\n")
    with pytest.raises(MalformedRecordError, match="repeated column names"):
        list(CsvReader(path).read(on_malformed=lambda err: None))


def test_parquet_values_become_json_ready(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    table = pa.table(
        {
            "ts": pa.array([when], pa.timestamp("us", tz="UTC")),
            "day": pa.array([dt.date(1970, 1, 11)]),
            "amount": pa.array([Decimal("1.25")], pa.decimal128(5, 2)),
            "blob": pa.array([b"\x00\x01"]),
            "tags": pa.array([[dt.date(1970, 1, 2)]]),
        }
    )
    pq.write_table(table, path)
    [(record, position)] = list(ParquetReader(path).read())
    assert record == {
        "ts": int(when.timestamp()) * 1_000_000 + 6,
        "day": 10,
        "amount": "1.25",
        "blob": "AAE=",
        "tags": [1],
    }
    assert position == {"row_group": 0, "row": 1}
    json.dumps(record)


def test_parquet_positions_walk_row_groups(tmp_path: Path) -> None:
    reader = _parquet(tmp_path)
    positions = [p for _, p in reader.read()]
    assert positions[3:5] == [{"row_group": 0, "row": 4}, {"row_group": 1, "row": 1}]
    assert positions[-1] == {"row_group": 2, "row": 2}
    assert reader.record_key(positions[4]) == "1.0"
    with pytest.raises(SourceChangedError, match="no row 9 in row group 1"):
        list(reader.read({"row_group": 1, "row": 9}))


def test_a_position_past_the_end_means_the_source_changed(tmp_path: Path) -> None:
    reader = _jsonl(tmp_path)
    with pytest.raises(SourceChangedError, match="fewer than the position"):
        list(reader.read({"byte": 10_000, "line": 99}))
    with pytest.raises(SourceChangedError, match="fewer than 9"):
        list(RecordsReader([{}]).read({"index": 9}))


def test_records_identity_is_their_content(tmp_path: Path) -> None:
    a = RecordsReader([{"id": 1, "x": "y"}, b"\x08\x01"]).identity()
    b = RecordsReader([{"x": "y", "id": 1}, b"\x08\x01"]).identity()
    c = RecordsReader([{"id": 2, "x": "y"}, b"\x08\x01"]).identity()
    assert a == b and a.size == 2 and a.digest is not None and len(a.digest) == 64
    assert a.difference(c) == "source content changed (digest differs)"


def test_reader_for_chooses_by_extension(tmp_path: Path) -> None:
    assert isinstance(reader_for(tmp_path / "a.ndjson"), JsonLinesReader)
    assert isinstance(reader_for(tmp_path / "a.JSONL"), JsonLinesReader)
    assert isinstance(reader_for(tmp_path / "a.csv"), CsvReader)
    assert isinstance(reader_for(tmp_path / "a.parquet"), ParquetReader)
    assert isinstance(reader_for(tmp_path / "a.dat", "csv"), CsvReader)
    assert reader_for(tmp_path / "a.jsonl", uri="/Volumes/c/s/v/a.jsonl").name == "/Volumes/c/s/v/a.jsonl"
    with pytest.raises(ValueError, match="pass format="):
        reader_for(tmp_path / "a.dat")
    with pytest.raises(ValueError, match="unknown source format 'xml'"):
        reader_for(tmp_path / "a.dat", "xml")


def test_dead_letter_keeps_each_bad_line_once_across_tries(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    errs = [
        MalformedRecordError("/d/a.csv", n, "bad", f"raw{n}", {"byte": n, "row": n}, row=n) for n in (2, 5)
    ]
    first = DeadLetter(path)
    assert first.write(errs[0]) and not first.write(errs[0])
    first.flush()
    with path.open("a") as f:
        f.write('{"source": "/d/a.csv", "li')  # a try killed mid-write
    first.close()
    second = DeadLetter(path)
    assert not second.write(errs[0])
    assert second.write(errs[1])
    second.close()
    entries = [json.loads(t) for t in path.read_text().splitlines() if t.endswith("}")]
    assert entries == [
        {"source": "/d/a.csv", "line": 2, "error": "bad", "raw": "raw2", "row": 2},
        {"source": "/d/a.csv", "line": 5, "error": "bad", "raw": "raw5", "row": 5},
    ]
