"""The per-try UI record (``<checkpoint_key>.ui``) written by the operators, against the emulators: a try
that fails, then a retry recorded with what it resumed, for an upload, a download, a sync and an ingest.
On success the record goes with the checkpoint and the final XCom ``checkpoint`` value carries the tries."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.operators.azure_blob import (
    AzureBlobToDatabricksVolumeOperator,
    AzureBlobToLocalFilesystemOperator,
    DatabricksVolumeToAzureBlobOperator,
    LocalFilesystemToAzureBlobOperator,
)
from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)
from airflow_databricks_transfer.operators.sync import DatabricksVolumeSyncOperator
from airflow_databricks_transfer.operators.zerobus import ZerobusIngestOperator
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator
from tests.integration import test_azure_operators as az
from tests.integration import test_zerobus_operator as zb
from tests.integration.conftest import DictStore, MiB, context, make_file
from tests.integration.test_zerobus_operator import FAST, jsonl, new_table

zb_conn = zb.zb_conn  # the Zerobus connection fixture
wasb, container = az.wasb, az.container  # the Azurite connection and a fresh container name

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"
UI = "checkpoint.ui"
ONE_ATTEMPT = RetryPolicy(max_attempts=1, base_delay_s=0.01, max_delay_s=0.02)


class Ti:
    """Stands in for the task instance of one try: its number and its XComs."""

    def __init__(self, try_number: int) -> None:
        self.try_number = try_number
        self.dag_id, self.run_id, self.task_id, self.map_index = "d", f"r{os.getpid()}", "t", -1
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, json.loads(json.dumps(value))))

    def final(self) -> dict[str, Any]:
        value: dict[str, Any] = [v for k, v in self.pushed if k == "checkpoint"][-1]
        return value


class WatchedStore(DictStore):
    """The task state store, keeping every version of the UI record written (what the tab polled)."""

    def __init__(self) -> None:
        super().__init__()
        self.ui_versions: list[dict[str, Any]] = []

    def set(self, key: str, value: Any, **kw: Any) -> None:
        super().set(key, value, **kw)
        if key == UI:
            self.ui_versions.append(copy.deepcopy(self.data[key]))


def check_failed_then_resumed(store: WatchedStore, ti2: Ti, *, unit: str, kind: str) -> list[dict[str, Any]]:
    """What every transfer shares: try 1 failed (its error kept), try 2 succeeded; the record is gone and the
    final XCom value carries both tries and the result. Returns the tries."""
    assert UI not in store.data, "success deletes the UI record with the checkpoint"
    assert "checkpoint" not in store.data
    final = ti2.final()
    assert final["phase"] == "done"
    tries = final["tries"]
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
    assert tries[0]["error"] and tries[1]["error"] is None
    assert all(t["ended_at"] >= t["started_at"] for t in tries)
    assert final["result"] and final["kind"] == kind and final["unit"] == unit
    assert final["source"] == store.ui_versions[-1]["source"] and "bytes_total" in final
    assert {v["unit"] for v in store.ui_versions} == {unit} and {v["kind"] for v in store.ui_versions} == {
        kind
    }
    assert all(len(json.dumps(v)) <= 32 * 1024 for v in store.ui_versions)
    return list(tries)


def test_an_upload_that_failed_then_resumed_is_recorded_try_by_try(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 11 * MiB, seed=5)  # parts of 5, 5 and 1 MiB
    remote = f"{VOL}/ui/src.bin"

    def operator() -> LocalFilesystemToDatabricksVolumeOperator:
        return LocalFilesystemToDatabricksVolumeOperator(
            task_id="upload",
            databricks_conn_id=conn,
            local_path=str(src),
            volume_path=remote,
            part_size_bytes=5 * MiB,
            multipart_threshold_bytes=MiB,
            parallelism=1,
            transfer_retry=ONE_ATTEMPT,
        )

    files_api_emulator.add_fault(route="presigned.part", part_number=2, status=503, times=None)
    store, ti1 = WatchedStore(), Ti(1)
    with pytest.raises(Exception) as failed:
        operator().execute(context(task_state_store=store, ti=ti1))
    assert not isinstance(failed.value, AirflowFailException)  # a retry is allowed
    record = store.data[UI]
    assert (record["units_total"], record["bytes_total"], record["parallelism"]) == (3, 11 * MiB, 1)
    assert (record["source"], record["destination"]) == (str(src), remote)
    (first,) = record["tries"]
    assert (first["try_number"], first["state"], first["resumed_units"]) == (1, "failed", 0)
    assert (first["sent_units"], first["sent_bytes"]) == (1, 5 * MiB)
    assert "503" in first["error"] or "Unavailable" in first["error"]
    assert record["live"]["phase"] == "failed" and record["live"]["units_done"] == 1
    # while it ran, the tab saw the parts in flight (1-based part numbers, as in the checkpoint)
    assert [1] in [v["live"]["inflight"] for v in store.ui_versions]

    files_api_emulator.clear_faults()
    seen = len(store.ui_versions)
    ti2 = Ti(2)
    operator().execute(context(task_state_store=store, ti=ti2))
    first, second = check_failed_then_resumed(store, ti2, unit="part", kind="files_api.upload")
    assert (second["resumed_units"], second["resumed_bytes"]) == (1, 5 * MiB)
    assert (second["sent_units"], second["sent_bytes"]) == (2, 6 * MiB)
    assert ti2.final()["result"]["bytes"] == 11 * MiB and ti2.final()["result"]["sha256"]
    assert (ti2.final()["units_total"], ti2.final()["bytes_total"]) == (3, 11 * MiB)  # the map, drawn done
    live = [v["live"] for v in store.ui_versions[seen:]]
    assert live[0]["try_number"] == 2 and live[0]["units_done"] == 1  # it starts from what it resumed
    assert {n for v in live for n in v["inflight"]} <= {2, 3}  # part 1 is never sent again


def test_a_download_that_failed_then_resumed_is_recorded_try_by_try(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    remote = f"{VOL}/ui/model.bin"
    data = make_file(tmp_path / "model.bin", 4 * MiB + 5, seed=9).read_bytes()
    files_api_emulator.local_path(remote).parent.mkdir(parents=True, exist_ok=True)
    files_api_emulator.local_path(remote).write_bytes(data)

    def operator() -> DatabricksVolumeToLocalFilesystemOperator:
        return DatabricksVolumeToLocalFilesystemOperator(
            task_id="download",
            databricks_conn_id=conn,
            volume_path=remote,
            local_path=str(tmp_path / "out.bin"),
            chunk_size_bytes=MiB,
            parallelism=1,
            transfer_retry=ONE_ATTEMPT,
        )

    files_api_emulator.add_fault(route="presigned.download", nth=3, status=503, times=None)
    store, ti1 = WatchedStore(), Ti(1)
    with pytest.raises(Exception) as failed:
        operator().execute(context(task_state_store=store, ti=ti1))
    assert not isinstance(failed.value, AirflowFailException)
    record = store.data[UI]
    assert (record["units_total"], record["bytes_total"]) == (5, 4 * MiB + 5)
    (first,) = record["tries"]
    assert first["state"] == "failed" and first["resumed_units"] == 0
    done_before = first["sent_units"]
    assert done_before >= 1 and first["sent_bytes"] >= done_before * MiB
    # chunks are 0-based indexes, as in DownloadCheckpoint.done_chunks
    assert [0] in [v["live"]["inflight"] for v in store.ui_versions]

    files_api_emulator.clear_faults()
    ti2 = Ti(2)
    operator().execute(context(task_state_store=store, ti=ti2))
    assert (tmp_path / "out.bin").read_bytes() == data
    _, second = check_failed_then_resumed(store, ti2, unit="chunk", kind="files_api.download")
    assert second["resumed_units"] == done_before and second["resumed_bytes"] == done_before * MiB
    assert second["sent_units"] == 5 - done_before
    assert second["sent_bytes"] == 4 * MiB + 5 - done_before * MiB


def test_a_sync_whose_retry_sends_what_the_first_try_left_is_recorded_with_the_files_resumed(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    sizes = {f"dir{i % 2}/file {i}.txt": 1000 + i for i in range(6)}
    for rel, size in sizes.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x" * size)
    target = f"{VOL}/ui-synced"
    bad = "dir1/file 1.txt"

    def operator() -> DatabricksVolumeSyncOperator:
        return DatabricksVolumeSyncOperator(
            task_id="sync",
            databricks_conn_id=conn,
            local_dir=str(src),
            volume_path=target,
            hash_cache_path=str(tmp_path / "hash-cache.sqlite"),
            concurrency=2,
        )

    files_api_emulator.add_fault(route="files.put", path=f"{target}/{bad}", status=400, times=None)
    store, ti1 = WatchedStore(), Ti(1)
    with pytest.raises(AirflowException, match="1 of 6 files failed"):
        operator().execute(context(task_state_store=store, ti=ti1))
    record = store.data[UI]
    assert (record["units_total"], record["bytes_total"]) == (6, sum(sizes.values()))
    assert (record["source"], record["destination"], record["parallelism"]) == (str(src), target, 2)
    (first,) = record["tries"]
    assert first["state"] == "failed" and "1 of 6 files failed" in first["error"]
    assert (first["sent_units"], first["resumed_units"]) == (5, 0)
    # files have no identity across tries: in flight as a count only
    assert all(v["live"]["inflight"] == [] for v in store.ui_versions)
    assert any(v["live"]["inflight_count"] > 0 for v in store.ui_versions)

    files_api_emulator.clear_faults()
    ti2 = Ti(2)
    operator().execute(context(task_state_store=store, ti=ti2))
    _, second = check_failed_then_resumed(store, ti2, unit="file", kind="volume_sync")
    assert (second["resumed_units"], second["resumed_bytes"]) == (5, sum(sizes.values()) - sizes[bad])
    assert (second["sent_units"], second["sent_bytes"]) == (1, sizes[bad])
    assert ti2.final()["result"]["uploaded"] == 1
    assert "actions" not in ti2.final()["result"]  # lists stay out of the record's result


class KillingStore(WatchedStore):
    """Fires on_kill once the checkpoint says ``at`` records are acknowledged (where a SIGTERM lands)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.op: ZerobusIngestOperator | None = None
        self.killed = False

    def set(self, key: str, value: Any, **kw: Any) -> None:
        super().set(key, value, **kw)
        acked = value.get("records_acked", 0) if key == "checkpoint" and isinstance(value, dict) else 0
        if self.op is not None and not self.killed and acked >= self.at:
            self.killed = True
            threading.Thread(target=self.op.on_kill).start()  # as the signal handler would, from outside


def test_an_ingest_killed_mid_stream_then_resumed_is_recorded_by_batches_and_source_bytes(
    zerobus_emulator: ZerobusEmulator, zb_conn: str, tmp_path: Path
) -> None:
    n, batch = 2000, 50
    table = new_table(zerobus_emulator)
    src = jsonl(tmp_path / "events.jsonl", n)
    zerobus_emulator.update_settings(commit_interval_s=0.02)  # a paced stream

    def operator() -> ZerobusIngestOperator:
        return ZerobusIngestOperator(
            task_id="ingest",
            databricks_conn_id=zb_conn,
            source_path=str(src),
            table_name=table,
            batch_records=batch,
            flush_every_batches=2,
            flush_interval_s=0,
            dedupe_key="dedupe_key",
            **FAST,
        )

    store = KillingStore(at=n // 3)
    first = store.op = operator()
    with pytest.raises(Exception) as killed:
        first.execute(context(task_state_store=store, ti=Ti(1)))
    assert not isinstance(killed.value, AirflowFailException)
    left = store.data["checkpoint"]
    record = store.data[UI]
    assert record["unit"] == "batch" and record["units_total"] is None  # batches are not known upfront
    assert record["bytes_total"] == src.stat().st_size and (record["source"], record["destination"]) == (
        str(src),
        table,
    )
    (entry,) = record["tries"]
    assert entry["state"] == "failed" and entry["error"].startswith("Killed")  # on_kill closed it
    assert all(v["live"]["inflight"] == [] for v in store.ui_versions)

    store.op = None
    ti2 = Ti(2)
    result = operator().execute(context(task_state_store=store, ti=ti2))
    _, second = check_failed_then_resumed(store, ti2, unit="batch", kind="zerobus.ingest")
    assert second["resumed_units"] == left["batches_acked"] > 0
    assert 0 < second["resumed_bytes"] < src.stat().st_size  # by source position
    assert second["resumed_bytes"] + second["sent_bytes"] == src.stat().st_size
    assert second["sent_units"] == result["batches"] - left["batches_acked"]
    assert ti2.final()["result"]["records"] == n


def test_the_four_azure_operators_record_their_try_and_hand_it_to_xcom(
    wasb: str, conn: str, container: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "w.bin", 3 * MiB + 7, seed=11)
    common: dict[str, Any] = {"wasb_conn_id": wasb, "container_name": container}
    volume = f"{VOL}/ui-azure/w.bin"
    steps: list[tuple[Any, str, str, str, str]] = [
        (
            LocalFilesystemToAzureBlobOperator(
                task_id="up",
                **common,
                blob_name="a/w.bin",
                local_path=str(src),
                block_size_bytes=MiB,
                single_put_threshold_bytes=1,
                create_container=True,
            ),
            "azure_blob.upload",
            "block",
            str(src),
            f"{container}/a/w.bin",
        ),
        (
            AzureBlobToDatabricksVolumeOperator(
                task_id="to_volume",
                **common,
                blob_name="a/w.bin",
                volume_path=volume,
                databricks_conn_id=conn,
            ),
            "azure_blob.to_volume",
            "part",
            f"{container}/a/w.bin",
            volume,
        ),
        (
            DatabricksVolumeToAzureBlobOperator(
                task_id="from_volume",
                **common,
                blob_name="b/w.bin",
                volume_path=volume,
                databricks_conn_id=conn,
                part_size_bytes=MiB,
            ),
            "volume.to_azure_blob",
            "block",
            volume,
            f"{container}/b/w.bin",
        ),
        (
            AzureBlobToLocalFilesystemOperator(
                task_id="down", **common, blob_name="b/w.bin", local_path=str(tmp_path / "back.bin")
            ),
            "azure_blob.download",
            "chunk",
            f"{container}/b/w.bin",
            str(tmp_path / "back.bin"),
        ),
    ]
    for operator, kind, unit, source, destination in steps:
        store, ti = WatchedStore(), Ti(1)
        result = operator.execute(context(task_state_store=store, ti=ti))
        assert store.data == {}, kind  # checkpoint and UI record both go on success
        final = ti.final()
        assert (final["kind"], final["unit"], final["source"], final["destination"]) == (
            kind,
            unit,
            source,
            destination,
        )
        assert [t["state"] for t in final["tries"]] == ["success"] and final["bytes_total"] == 3 * MiB + 7
        assert final["units_total"] == result.get("parts", result.get("chunks")), kind
        assert store.ui_versions and store.ui_versions[0]["live"]["phase"] == "starting"
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
