"""TaskCheckpointStore with ingest checkpoints: one small value, resumed as written, refused when foreign."""

from __future__ import annotations

from typing import Any

from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint, SourceIdentity
from tests.unit.test_task_checkpoints import FakeStore, FakeTI


def _cp() -> IngestCheckpoint:
    return IngestCheckpoint(
        "main.default.events",
        SourceIdentity("/data/events.jsonl", 1234, 5, None),
        "jsonl",
        {"byte": 600, "line": 10},
        records_acked=10,
        batches_acked=2,
        created_at=1_800_000_000.0,
    )


def test_an_ingest_checkpoint_is_one_value_and_loads_back() -> None:
    store, ti = FakeStore(), FakeTI()
    sink = TaskCheckpointStore({"task_state_store": store, "ti": ti})
    sink.save(_cp())
    assert store.writes == ["checkpoint"]
    loaded, why = TaskCheckpointStore({"task_state_store": store}).load_ingest()
    assert why is None and loaded == _cp()
    assert ti.xcom["checkpoint"]["kind"] == "zerobus.ingest"
    sink.finish("zerobus.ingest", {"table": "main.default.events", "records": 10, "source": "x"})
    assert store.data == {}
    assert ti.xcom["checkpoint"] == {
        "kind": "zerobus.ingest",
        "table": "main.default.events",
        "source": "x",
        "records": 10,
        "phase": "done",
        "percent": 100.0,
    }


def test_a_foreign_value_is_discarded_with_its_reason() -> None:
    store = FakeStore()
    bad: dict[str, Any] = {**_cp().to_dict(), "kind": "files_api.download"}
    store.data["checkpoint"] = bad
    loaded, why = TaskCheckpointStore({"task_state_store": store}).load_ingest()
    assert loaded is None and why is not None and "zerobus.ingest" in why
    assert store.data == {}
    store.data["checkpoint"] = ["not", "an", "object"]
    assert TaskCheckpointStore({"task_state_store": store}).load_ingest() == (
        None,
        "checkpoint is not a JSON object",
    )
