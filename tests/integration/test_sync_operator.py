"""The sync operators outside a scheduler, against the Files emulator: templates and UI Params, a retried
sync that resumes (manifest + per-file checkpoints), partial failure, and the plan/batches/merge fan-out."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_databricks_transfer.engine.sync import FRAGMENTS_DIR, MANIFEST_NAME
from airflow_databricks_transfer.operators.sync import (
    DatabricksVolumeSyncMergeOperator,
    DatabricksVolumeSyncOperator,
    DatabricksVolumeSyncPlanOperator,
)
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import DictStore, MiB, context, make_file, wait_for

pytestmark = pytest.mark.integration

TARGET = "/Volumes/main/default/landing/synced"


class Ti:
    """Stands in for the task instance: its XComs, and the identity a batch names its fragment by."""

    def __init__(self, map_index: int = -1) -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = (
            "d",
            "manual__2026-11-30T10:00:00+00:00",
            "t",
            map_index,
        )
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


def tree(root: Path, n: int = 12) -> dict[str, bytes]:
    files = {f"dir{i % 3}/file {i}.txt": f"content {i}\n".encode() * (i + 1) for i in range(n)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def op(conn: str, tmp_path: Path, **kwargs: Any) -> DatabricksVolumeSyncOperator:
    args: dict[str, Any] = {
        "task_id": "sync",
        "databricks_conn_id": conn,
        "local_dir": str(tmp_path / "src"),
        "volume_path": TARGET,
        "hash_cache_path": str(tmp_path / "hash-cache.sqlite"),
        "progress_interval_s": 0.0,
        **kwargs,
    }
    return DatabricksVolumeSyncOperator(**args)


def test_templated_sync_with_params_then_nothing_to_do(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    files = tree(tmp_path / "src")
    (tmp_path / "src" / "skip.log").write_text("no")
    task = op(
        conn,
        tmp_path,
        local_dir="{{ params.src }}",
        volume_path="{{ params.target }}",
        include="{{ params.include }}",
        concurrency="{{ params.concurrency }}",
        dry_run="{{ params.dry_run }}",
    )
    params = {"src": str(tmp_path / "src"), "target": TARGET, "include": "*.txt", "concurrency": "3"}
    task.render_template_fields({"params": {**params, "dry_run": "True"}})
    dry = task.execute(context(task_state_store=DictStore(), ti=Ti()))
    assert dry["dry_run"] and len(dry["actions"]) == len(files) and dry["uploaded"] == 0
    assert not files_api_emulator.local_path(TARGET).exists()

    task = op(conn, tmp_path, include=["*.txt"], concurrency=3)
    ti = Ti()
    first = task.execute(context(task_state_store=DictStore(), ti=ti))
    assert (first["uploaded"], first["failed"]) == (len(files), 0)
    for rel, data in files.items():
        assert files_api_emulator.local_path(f"{TARGET}/{rel}").read_bytes() == data
    assert not files_api_emulator.local_path(f"{TARGET}/skip.log").exists()
    progress = [v for k, v in ti.pushed if k == "checkpoint"]
    assert progress and progress[-1]["phase"] == "done" and progress[-1]["files_done"] == len(files)

    again = op(conn, tmp_path, include="*.txt").execute(context(task_state_store=DictStore(), ti=Ti()))
    assert (again["uploaded"], again["skipped"], again["files_hashed"]) == (0, len(files), 0)


def test_bad_arguments_fail_fast(conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path) -> None:
    tree(tmp_path / "src", 2)
    with pytest.raises(AirflowFailException, match="concurrency must be a number"):
        op(conn, tmp_path, concurrency="many").execute(context(task_state_store=DictStore(), ti=Ti()))
    with pytest.raises(AirflowFailException, match="not a Volume folder"):
        op(conn, tmp_path, volume_path="/tmp/x").execute(context(task_state_store=DictStore(), ti=Ti()))
    with pytest.raises(AirflowFailException, match="does not exist"):
        op(conn, tmp_path, volume_path="/Volumes/no/such/volume").execute(
            context(task_state_store=DictStore(), ti=Ti())
        )
    with pytest.raises(AirflowFailException, match="not a directory"):
        op(conn, tmp_path, local_dir=str(tmp_path / "nope")).execute(
            context(task_state_store=DictStore(), ti=Ti())
        )


def test_a_failing_file_fails_the_task_at_the_end_and_the_retry_sends_only_it(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    files = tree(tmp_path / "src", 6)
    bad = "dir1/file 1.txt"
    files_api_emulator.add_fault(route="files.put", path=f"{TARGET}/{bad}", status=400, times=None)
    ti = Ti()
    with pytest.raises(AirflowException, match=r"1 of 6 files failed \(first: dir1/file 1.txt"):
        op(conn, tmp_path).execute(context(task_state_store=DictStore(), ti=ti))
    summary = dict(ti.pushed)["sync_result"]
    assert summary["uploaded"] == 5 and summary["failures"][0]["path"] == bad
    assert not files_api_emulator.local_path(f"{TARGET}/{bad}").exists()

    tolerant = op(conn, tmp_path, fail_on_error=False).execute(context(task_state_store=DictStore(), ti=Ti()))
    assert (tolerant["uploaded"], tolerant["failed"]) == (0, 1)

    files_api_emulator.clear_faults()
    retry = op(conn, tmp_path).execute(context(task_state_store=DictStore(), ti=Ti()))
    assert [a["path"] for a in retry["actions"]] == [bad] and retry["failed"] == 0
    assert files_api_emulator.local_path(f"{TARGET}/{bad}").read_bytes() == files[bad]


def test_a_killed_sync_resumes_finished_files_and_the_half_sent_large_one(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    small = tree(src, 8)
    (src / "big").mkdir()
    big = make_file(src / "big" / "model.bin", 24 * MiB, seed=7)
    store = DictStore()
    # paced, so the kill lands with some parts of the large file done and others not
    kwargs: dict[str, Any] = {
        "part_size_bytes": 5 * MiB,
        "multipart_threshold_bytes": 6 * MiB,
        "parallelism": 2,
        "bandwidth_limit_bytes_per_s": 8 * MiB,
    }
    first = op(conn, tmp_path, **kwargs)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            first.execute(context(task_state_store=store, ti=Ti()))
        except BaseException as err:  # noqa: BLE001 - the cancelled try's error is inspected below
            errors.append(err)

    t = threading.Thread(target=run)
    t.start()
    wait_for(
        lambda: (
            len([r for r in files_api_emulator.requests() if r.route == "presigned.part" and r.status < 300])
            >= 2
        ),
        "two parts of the large file",
    )
    first.on_kill()
    t.join(60)
    assert errors, "the killed try must not report success"
    keys = [k for k in store.data if ".file." in k]
    assert keys, "the half-sent large file keeps its checkpoint in the task state store"
    manifest = json.loads(files_api_emulator.local_path(f"{TARGET}/{MANIFEST_NAME}").read_bytes())
    assert set(small) <= set(manifest["files"])  # the small files finished first and were recorded
    seq = max(r.seq for r in files_api_emulator.requests())

    second = op(conn, tmp_path, **{**kwargs, "bandwidth_limit_bytes_per_s": None})
    ti2 = Ti()
    result = second.execute(context(task_state_store=store, ti=ti2))
    final = [v for k, v in ti2.pushed if k == "checkpoint"][-1]
    # the sync's own progress counts the large file's resumed parts as resumed, not as sent
    assert final["phase"] == "done" and final["bytes_resumed"] == result["bytes_resumed"]
    assert result["uploaded"] == 1 and [a["path"] for a in result["actions"]] == ["big/model.bin"]
    assert result["bytes_resumed"] >= 5 * MiB
    resent = [r for r in files_api_emulator.requests(since=seq) if r.route == "presigned.part"]
    assert len(resent) == 5 - result["bytes_resumed"] // (5 * MiB)
    assert not [
        r for r in files_api_emulator.requests(since=seq) if r.route == "files.put" and "file " in r.path
    ]
    assert files_api_emulator.local_path(f"{TARGET}/big/model.bin").read_bytes() == big.read_bytes()
    assert not [k for k in store.data if ".file." in k], "checkpoints are deleted once their file is done"


def test_plan_batches_and_merge(conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path) -> None:
    files = tree(tmp_path / "src", 10)
    os.makedirs(tmp_path / "src" / "empty-dir")
    plan = DatabricksVolumeSyncPlanOperator(
        task_id="plan",
        databricks_conn_id=conn,
        local_dir=str(tmp_path / "src"),
        volume_path=TARGET,
        batches="{{ params.n }}",
        hash_cache_path=str(tmp_path / "hash-cache.sqlite"),
    )
    plan.render_template_fields({"params": {"n": 3}})
    batches = plan.execute(context(task_state_store=DictStore(), ti=Ti()))
    assert len(batches) == 3 and sorted(r for b in batches for r in b) == sorted(files)
    assert not files_api_emulator.local_path(TARGET).exists()  # planning sends nothing

    for i, batch in enumerate(batches):
        out = op(conn, tmp_path, files=batch).execute(
            context(task_state_store=DictStore(), ti=Ti(map_index=i))
        )
        assert out["uploaded"] == len(batch)
    fragments = sorted(p.name for p in files_api_emulator.local_path(f"{TARGET}/{FRAGMENTS_DIR}").iterdir())
    assert len(fragments) == 3 and all(f.startswith("fd-manual__") and f.endswith(".json") for f in fragments)

    merge = DatabricksVolumeSyncMergeOperator(task_id="merge", databricks_conn_id=conn, volume_path=TARGET)
    assert merge.execute(context()) == {"fragments": 3, "files": len(files)}
    assert plan.execute(context(task_state_store=DictStore(), ti=Ti())) == []
