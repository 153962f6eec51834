"""Where checkpoints go inside Airflow: segmented state-store keys, the XCom mirror, and Airflow < 3.3."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from airflow_databricks_transfer import checkpoints as ckpts
from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.engine.checkpoint import SourceFingerprint, UploadCheckpoint

MiB = 1024 * 1024


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        assert retention is not None  # checkpoints must never expire
        self.writes.append(key)
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _cp(parts: int, done: int) -> UploadCheckpoint:
    cp = UploadCheckpoint(
        "/Volumes/c/s/v/f",
        SourceFingerprint("/f", parts * 5 * MiB, 1, 2),
        5 * MiB,
        parts,
        "secret-session-token",
    )
    for n in range(1, done + 1):
        cp = cp.with_part(n, f'"{hashlib.md5(bytes([n % 256])).hexdigest()}"')
    return cp


def test_segments_are_written_once_then_only_when_they_change() -> None:
    store, ti = FakeStore(), FakeTI()
    sink = TaskCheckpointStore({"task_state_store": store, "ti": ti})
    cp = _cp(2500, 0)
    sink.save(cp, frozenset(range(cp.segment_count)))
    assert sorted(store.writes) == ["checkpoint", "checkpoint.seg.0", "checkpoint.seg.1", "checkpoint.seg.2"]
    store.writes.clear()
    cp = cp.with_part(1200, '"0123456789abcdef0123456789abcdef"')
    sink.save(cp, frozenset({cp.segment_of(1200)}))
    assert store.writes == ["checkpoint.seg.1", "checkpoint"]  # one segment and the head
    loaded, why = TaskCheckpointStore({"task_state_store": store, "ti": ti}).load_upload()
    assert why is None and loaded == cp
    assert "session_token" not in ti.xcom["checkpoint"] and ti.xcom["checkpoint"]["parts_done"] == 1
    sink.finish(UploadCheckpoint.kind, {"destination": "/Volumes/c/s/v/f", "bytes": 1})
    assert store.data == {}  # a Clear after success must start over
    assert ti.xcom["checkpoint"]["phase"] == "done"


def test_without_a_state_store_it_still_works_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ckpts._warned, "no_store", False)
    ti = FakeTI()
    with caplog.at_level(logging.WARNING, logger="airflow_databricks_transfer.checkpoints"):
        first = TaskCheckpointStore({"ti": ti})  # Airflow < 3.3: no task_state_store in the context
        TaskCheckpointStore({"ti": ti})
    assert caplog.text.count("no task state store") == 1
    assert not first.durable
    assert first.load_upload() == (None, None)
    first.save(_cp(4, 1), frozenset({0}))  # progress still reaches the UI
    assert ti.xcom["checkpoint"]["parts_done"] == 1
    first.clear()
