"""Ingest checkpoints: round-trip, the golden file, refusal of corrupt, foreign and future input."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint, SourceIdentity
from airflow_databricks_transfer.engine.errors import CheckpointError

GOLDEN = Path(__file__).with_name("golden")


def _golden() -> IngestCheckpoint:
    return IngestCheckpoint(
        table="main.default.events",
        source=SourceIdentity("/data/events.jsonl", 1048576, 1_700_000_000_123_456_789),
        format="jsonl",
        position={"byte": 524288, "line": 2500},
        records_acked=2498,
        batches_acked=3,
        dead_lettered=2,
        created_at=1_700_000_000.0,
    )


def test_golden_file_keeps_loading() -> None:
    """Written by a released version: must load forever (or upgrade); never edit the file."""
    assert IngestCheckpoint.from_json((GOLDEN / "zerobus_ingest_v1.json").read_text()) == _golden()


@pytest.mark.parametrize(
    ("fmt", "position"),
    [
        ("jsonl", {"byte": 10, "line": 2}),
        ("csv", {"byte": 10, "row": 1}),
        ("parquet", {"row_group": 3, "row": 7}),
        ("records", {"index": 5}),
    ],
)
def test_round_trip_for_every_format(fmt: Any, position: dict[str, int]) -> None:
    src = SourceIdentity("records://xcom", 9, None, "ab" * 32)
    cp = IngestCheckpoint("c.s.t", src, fmt, position, records_acked=4, batches_acked=1)
    assert IngestCheckpoint.from_json(cp.to_json()) == cp
    assert IngestCheckpoint.from_dict(json.loads(cp.to_json())) == cp


def _mutated(**changes: Any) -> dict[str, Any]:
    d = _golden().to_dict()
    for key, value in changes.items():
        if value is ...:
            del d[key]
        else:
            d[key] = value
    return d


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_mutated(kind="files_api.upload"), "checkpoint is a 'files_api.upload', expected 'zerobus.ingest'"),
        (_mutated(schema="someone-else"), "not a checkpoint of this package"),
        (_mutated(version=2), "newer than this package understands"),
        (_mutated(version=0), "invalid schema version"),
        (_mutated(position={"byte": 1}), "a jsonl position has the keys"),
        (_mutated(position={"byte": -1, "line": 0}), "non-negative integers"),
        (_mutated(position={"byte": "1", "line": 0}), "expected an integer"),
        (_mutated(position={"byte": True, "line": 0}), "expected an integer"),
        (_mutated(format="xml"), "unknown ingest source format"),
        (_mutated(records_acked=-3), "non-negative"),
        (_mutated(table=None), "expected a string"),
        (_mutated(source={"uri": "/x"}), "corrupt ingest checkpoint"),
        (_mutated(position=...), "corrupt ingest checkpoint"),
        (_mutated(created_at="yesterday"), "corrupt ingest checkpoint"),
    ],
)
def test_bad_checkpoints_are_refused_with_a_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        IngestCheckpoint.from_dict(data)


@pytest.mark.parametrize("text", ["", "[]", "{", "null"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        IngestCheckpoint.from_json(text)


def test_an_upload_checkpoint_never_loads_as_an_ingest() -> None:
    upload = json.loads((GOLDEN / "upload_checkpoint_v2.json").read_text())
    with pytest.raises(CheckpointError, match=r"expected 'zerobus\.ingest'"):
        IngestCheckpoint.from_dict(upload)


def test_validation_names_a_foreign_table_or_a_changed_source() -> None:
    cp = _golden()
    assert cp.validate_for("main.default.events", cp.source) is None
    assert cp.validate_for("main.default.other", cp.source) == (
        "checkpoint is for table main.default.events, not main.default.other"
    )
    assert cp.validate_for(cp.table, replace(cp.source, size=1)) == "source size changed (1048576 -> 1)"
    assert cp.validate_for(cp.table, replace(cp.source, mtime_ns=1)) == "source modification time changed"
    assert cp.validate_for(cp.table, replace(cp.source, uri="/data/b.jsonl")) == (
        "source changed (/data/events.jsonl -> /data/b.jsonl)"
    )
    assert cp.validate_for(cp.table, replace(cp.source, digest="00")) == (
        "source content changed (digest differs)"
    )


def test_identity_of_a_file_and_its_key_prefix(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n')
    ident = SourceIdentity.of_file(path)
    assert (ident.uri, ident.size, ident.mtime_ns) == (str(path), 9, os.stat(path).st_mtime_ns)
    assert SourceIdentity.of_file(path, uri="/Volumes/c/s/v/a.jsonl").uri == "/Volumes/c/s/v/a.jsonl"
    prefix = ident.key_prefix()
    assert len(prefix) == 16 and int(prefix, 16) >= 0
    assert prefix == SourceIdentity.of_file(path).key_prefix()
    assert prefix != replace(ident, mtime_ns=(ident.mtime_ns or 0) + 1).key_prefix()


def test_progress_view_is_small_and_names_no_credential() -> None:
    view = _golden().progress_view()
    assert view == {
        "kind": "zerobus.ingest",
        "table": "main.default.events",
        "source": "/data/events.jsonl",
        "format": "jsonl",
        "position": {"byte": 524288, "line": 2500},
        "records_acked": 2498,
        "batches_acked": 3,
        "dead_lettered": 2,
        "bytes_done": 524288,
        "bytes_total": 1048576,
        "percent": 50.0,
    }
    assert len(_golden().to_json()) < 1024
