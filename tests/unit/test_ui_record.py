"""The per-try UI record (``<checkpoint_key>.ui``): bounded, redacted, throttled, never failing a transfer."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_databricks_transfer.checkpoints import XCOM_KEY, TaskCheckpointStore
from airflow_databricks_transfer.engine.progress import ProgressEvent, ProgressTracker
from airflow_databricks_transfer.ui_record import (
    MAX_RECORD_BYTES,
    MAX_TRIES,
    SCHEMA,
    TransferRecorder,
    recording,
)

MiB = 1024 * 1024


class Store:
    """The task state store's get/set/delete, counting writes of the UI key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ui_writes = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        if key.endswith(".ui"):
            self.ui_writes += 1
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class BrokenStore(Store):
    def set(self, key: str, value: Any, **_: Any) -> None:
        raise RuntimeError("state store unavailable")


class TI:
    def __init__(self, try_number: int) -> None:
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = json.loads(json.dumps(value))


class Clock:
    def __init__(self) -> None:
        self.t = 1_796_000_000.0

    def __call__(self) -> float:
        return self.t


def recorder(store: Store, ti: TI | None = None, unit: str = "part", **kw: Any) -> TransferRecorder:
    kw.setdefault("kind", "files_api.upload")
    return TransferRecorder(
        {"task_state_store": store, "ti": ti},
        "checkpoint",
        source="/data/x.bin",
        destination="/Volumes/c/s/v/x.bin",
        unit=unit,
        parallelism=4,
        **kw,
    )


def test_a_10000_part_upload_over_many_failed_tries_stays_within_32_kib_and_20_tries() -> None:
    store = Store()
    clock = Clock()
    for n in range(1, 26):
        rec = recorder(store, TI(n), clock=clock, interval_s=0)
        rec.start_try(resumed_units=37 * (n - 1), resumed_bytes=37 * (n - 1) * 16 * MiB, discarded="x" * 900)
        tracker = ProgressTracker(
            "upload", 10_000 * 16 * MiB, 10_000, subscribers=[rec.subscriber()], clock=clock
        )
        tracker.resumed(37 * (n - 1) * 16 * MiB, 37 * (n - 1))
        for part in range(1, 65):  # 64 workers hold a part each
            tracker.begin(part)
        clock.t += 1
        tracker.add(16 * MiB, part_done=True, unit=1)
        rec.end_try(RuntimeError("RetryBudgetExceeded: gave up after 8 attempts: " + "e" * 2000))
        clock.t += 10
    raw = store.data["checkpoint.ui"]
    size = len(json.dumps(raw, separators=(",", ":")))
    assert size <= MAX_RECORD_BYTES
    print(f"UI record of a 10,000-part upload after 25 tries: {size} bytes")
    assert raw["schema"] == SCHEMA and raw["version"] == 1 and raw["kind"] == "files_api.upload"
    assert raw["units_total"] == 10_000 and raw["bytes_total"] == 10_000 * 16 * MiB
    tries = raw["tries"]
    assert len(tries) == MAX_TRIES and [t["try_number"] for t in tries] == list(range(6, 26))
    assert all(t["state"] == "failed" and len(t["error"]) <= 500 for t in tries)
    assert all(len(t["discarded"]) <= 500 for t in tries)
    last = tries[-1]
    assert last["resumed_units"] == 37 * 24 and last["sent_units"] == 1 and last["sent_bytes"] == 16 * MiB
    assert raw["live"]["phase"] == "failed" and raw["live"]["inflight"] == []


def test_live_progress_carries_the_parts_in_flight() -> None:
    store, clock = Store(), Clock()
    rec = recorder(store, TI(1), clock=clock)
    rec.start_try()
    assert store.data["checkpoint.ui"]["live"]["phase"] == "starting"
    tracker = ProgressTracker("upload", 10 * MiB, 10, subscribers=[rec.subscriber()], clock=clock)
    for part in (3, 1, 2):
        tracker.begin(part)  # the first report reaches the recorder at once, not after 2 s
    live = store.data["checkpoint.ui"]["live"]
    assert live["inflight"] == [3] and live["phase"] == "uploading"
    clock.t += 2
    tracker.add(MiB, part_done=True, unit=1)
    live = store.data["checkpoint.ui"]["live"]
    assert live["inflight"] == [2, 3] and live["inflight_count"] == 2
    assert live["units_done"] == 1 and live["bytes_done"] == MiB and live["try_number"] == 1


def test_writes_are_throttled_to_the_recorders_interval_whatever_the_log_interval() -> None:
    store, clock = Store(), Clock()
    rec = recorder(store, TI(1), clock=clock, interval_s=2.0)
    rec.start_try()
    logged: list[ProgressEvent] = []
    tracker = ProgressTracker(
        "upload", 1000 * MiB, 1000, subscribers=[logged.append, rec.subscriber()], interval_s=30, clock=clock
    )
    writes_before = store.ui_writes
    for part in range(1, 101):  # 100 parts, one every 0.1 s: 10 s
        tracker.begin(part)
        clock.t += 0.1
        tracker.add(MiB, part_done=True, unit=part)
    assert store.ui_writes - writes_before == 5  # at once, then every 2 s: at 0.1, 2.1, 4.1, 6.1, 8.1 s
    assert logged == []  # the log lines keep their own 30 s
    tracker.finish()
    assert store.ui_writes - writes_before == 6  # the final event is always written
    assert store.data["checkpoint.ui"]["live"]["phase"] == "completing"


def test_errors_and_names_are_redacted_like_the_logs() -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("s3cr3t-t0ken-value")
    store = Store()
    rec = TransferRecorder(
        {"task_state_store": store, "ti": TI(1)},
        kind="azure_blob.download",
        source="https://acct.blob.core.windows.net/c/b?sv=2024&sig=SIGNATURE",
        destination="/tmp/out.bin",
        unit="chunk",
    )
    rec.start_try()
    with pytest.raises(ConnectionError), recording(rec):
        raise ConnectionError(
            "GET https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc123 failed; auth s3cr3t-t0ken-value"
        )
    text = json.dumps(store.data["checkpoint.ui"])
    assert "abc123" not in text and "SIGNATURE" not in text and "s3cr3t-t0ken-value" not in text
    entry = store.data["checkpoint.ui"]["tries"][0]
    assert entry["state"] == "failed" and entry["ended_at"] is not None
    assert entry["error"].startswith("ConnectionError: GET https://bucket.s3.amazonaws.com/k?<redacted>")
    assert "***" in entry["error"]


def test_a_failing_state_store_never_fails_the_transfer(caplog: pytest.LogCaptureFixture) -> None:
    rec = recorder(BrokenStore(), TI(1), interval_s=0)
    with caplog.at_level(logging.WARNING, logger="airflow_databricks_transfer.ui_record"):
        rec.start_try()
        tracker = ProgressTracker("upload", 4 * MiB, 4, subscribers=[rec.subscriber()])
        for part in range(1, 5):
            tracker.begin(part)
            tracker.add(MiB, part_done=True, unit=part)
        rec.end_try("boom")
    warnings = [r for r in caplog.records if "UI record" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then ignored


def test_success_hands_the_tries_to_xcom_and_deletes_the_record_with_the_checkpoint() -> None:
    store, ti = Store(), TI(2)
    store.data["checkpoint"] = {"stale": True}
    first = recorder(store, TI(1))
    first.start_try()
    first.end_try(TimeoutError("read timed out"))
    rec = recorder(store, ti)
    rec.start_try(resumed_units=3, resumed_bytes=3 * MiB)
    writes = store.ui_writes
    summary = rec.end_try(
        result={
            "bytes": 10 * MiB,
            "mib_per_s": 12.5,
            "failures": [1, 2],
            "sha256": "ab",
            "restarted_reason": "the source changed since the checkpoint",
        }
    )
    assert store.ui_writes == writes  # success writes nothing: the key goes with the checkpoint
    assert [t["state"] for t in summary["tries"]] == ["failed", "success"]
    assert summary["tries"][1]["resumed_units"] == 3
    # the engine's own reason to start over shows as the try's discarded checkpoint
    assert summary["tries"][1]["discarded"] == "the source changed since the checkpoint"
    assert summary["result"]["sha256"] == "ab" and "failures" not in summary["result"]  # no lists
    TaskCheckpointStore({"task_state_store": store, "ti": ti}).finish(
        "files_api.upload", {"bytes": 10 * MiB}, summary
    )
    assert "checkpoint.ui" not in store.data and "checkpoint" not in store.data
    final = ti.xcom[XCOM_KEY]
    assert final["phase"] == "done" and len(final["tries"]) == 2 and final["result"]["sha256"] == "ab"


def test_without_a_task_instance_tries_are_numbered_after_the_record() -> None:
    store = Store()
    for _ in range(3):
        rec = recorder(store)
        rec.start_try()
        rec.end_try("failed")
    assert [t["try_number"] for t in store.data["checkpoint.ui"]["tries"]] == [1, 2, 3]


def test_a_record_of_another_kind_is_replaced() -> None:
    store = Store()
    store.data["checkpoint.ui"] = {"schema": "something-else", "tries": [{"try_number": 1}]}
    rec = recorder(store, TI(4), kind="files_api.download", unit="chunk")
    rec.start_try()
    raw = store.data["checkpoint.ui"]
    assert raw["schema"] == SCHEMA and [t["try_number"] for t in raw["tries"]] == [4]


def test_files_in_flight_are_a_count_and_a_retry_resumes_what_the_first_plan_finished() -> None:
    store, clock = Store(), Clock()
    rec = recorder(store, TI(1), unit="file", kind="volume_sync", cumulative=True, clock=clock)
    rec.start_try()
    rec.set_totals(10, 10 * MiB)
    tracker = ProgressTracker("sync", 10 * MiB, 10, subscribers=[rec.subscriber()], clock=clock, unit="file")
    for f in range(4):
        tracker.begin(f)
    live = store.data["checkpoint.ui"]["live"]
    assert live["inflight"] == [] and live["inflight_count"] == 1  # the first begin was written at once
    clock.t += 3
    tracker.add(MiB, part_done=True, unit=0)
    live = store.data["checkpoint.ui"]["live"]
    assert live["inflight"] == [] and live["inflight_count"] == 3 and live["units_done"] == 1
    rec.end_try("killed")
    retry = recorder(store, TI(2), unit="file", kind="volume_sync", cumulative=True, clock=clock)
    retry.start_try()
    retry.set_totals(6, 6 * MiB)  # the manifest records 4 files the first try sent
    raw = store.data["checkpoint.ui"]
    assert raw["units_total"] == 10 and raw["bytes_total"] == 10 * MiB
    entry = raw["tries"][-1]
    assert entry["resumed_units"] == 4 and entry["resumed_bytes"] == 4 * MiB
    tracker = ProgressTracker("sync", 6 * MiB, 6, subscribers=[retry.subscriber()], clock=clock, unit="file")
    tracker.begin(0)
    clock.t += 3
    tracker.add(MiB, part_done=True, unit=0)
    live = raw = store.data["checkpoint.ui"]["live"]
    assert live["units_done"] == 5 and live["bytes_done"] == 5 * MiB
    assert store.data["checkpoint.ui"]["tries"][-1]["sent_units"] == 1
