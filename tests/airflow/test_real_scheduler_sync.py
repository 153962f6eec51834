"""Volume sync resume on retry, proven with a real Airflow scheduler and CeleryExecutor workers: the first
try of DatabricksVolumeSyncOperator is SIGKILLed once its small files are sent and recorded in the
Volume's manifest and the large file is part-way; the scheduler's retry must send none of the recorded
files again, and of the large file only the parts missing from its checkpoint in the task state store.

What was sent is read from the Files API emulator's request log, split at try 2's start (as in
``resume_accounting``); tries, results and the task state store come from Airflow's public REST API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.sync import MANIFEST_NAME
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.airflow.resume_accounting import check_only_unfinished_parts_resent
from tests.airflow.stack import REPO, AirflowStack, celery_stack, databricks_connection_env, wait_for
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAG_ID, TASK_ID = "resume_sync", "sync"
VOL = "/Volumes/main/default/landing"
SMALL_FILES = 40
BIG = "big/model.bin"
SIZE = 64 * MiB
PART = 8 * MiB  # 8 parts, 2 at a time: at the pace below a pair ends every 4 s
PARALLELISM = 2
BANDWIDTH_MIB_S = 4  # try 1's large file would take 16 s


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    with FilesApiEmulator(tmp_path_factory.mktemp("files-root"), volumes=["main.default.landing"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def stack(emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    dags = tmp_path_factory.mktemp("dags")
    (dags / "resume_sync.py").symlink_to(REPO / "tests" / "airflow" / "dags" / "resume_sync.py")
    # the workers' hash cache lives in this module's own state folder
    env = {**databricks_connection_env(emulator), "XDG_STATE_HOME": str(tmp_path_factory.mktemp("state"))}
    home = tmp_path_factory.mktemp("airflow-celery-sync")
    with celery_stack(home, dags, env, redis_db=8) as airflow:
        airflow.wait_for_dag(DAG_ID)
        yield airflow


def make_tree(root: Path) -> dict[str, Path]:
    """40 small files of a few KiB in four folders, and one 64 MiB file."""
    files: dict[str, Path] = {}
    for i in range(SMALL_FILES):
        rel = f"small/d{i % 4}/f{i:02d}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"small file {i}\n".encode() * (100 + 37 * i))
        files[rel] = root / rel
    (root / "big").mkdir()
    files[BIG] = make_file(root / BIG, SIZE, seed=61)
    return files


def big_checkpoint(stack: AirflowStack, run_id: str) -> UploadCheckpoint | None:
    """The large file's checkpoint as the sync keeps it: under ``checkpoint.file.<digest of its path>``
    (the only file large enough to be checkpointed)."""
    store = stack.state_store(DAG_ID, run_id, TASK_ID)
    heads = [k for k in store if k.startswith("checkpoint.file.") and ".seg." not in k]
    assert len(heads) <= 1, heads
    if not heads:
        return None
    key = heads[0]
    head = store[key]
    segments = [store[f"{key}.seg.{i}"] for i in range(head["segments"])]
    return UploadCheckpoint.from_records(head, segments)


def manifest_files(emu: FilesApiEmulator, target: str) -> dict[str, Any]:
    path = emu.local_path(f"{target}/{MANIFEST_NAME}")
    return dict(json.loads(path.read_bytes())["files"]) if path.exists() else {}


def test_killed_sync_resumes_on_retry_sending_only_what_was_not_recorded(
    stack: AirflowStack, emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = emulator
    files = make_tree(tmp_path / "tree")
    small = sorted(rel for rel in files if rel != BIG)
    target = f"{VOL}/sync-resume/{uuid.uuid4().hex}"
    big_dest = f"{target}/{BIG}"
    conf = {"local_dir": str(tmp_path / "tree"), "volume_path": target, "bandwidth_mib_s": BANDWIDTH_MIB_S}
    run_id = stack.trigger(DAG_ID, conf)

    def ready_to_kill() -> tuple[dict[str, Any], UploadCheckpoint] | None:
        """Every small file is recorded in the Volume's manifest, and the large file's checkpoint holds
        some of its parts, not all. (Polled through the manifest and the task state store: a read of the
        emulator's request log waits for requests in flight, and paced part PUTs always are.)"""
        manifest = manifest_files(emu, target)
        if not set(small) <= set(manifest):
            return None
        cp = big_checkpoint(stack, run_id)
        return (manifest, cp) if cp is not None and 0 < len(cp.parts) < cp.part_count else None

    manifest_at_kill, at_kill = wait_for(ready_to_kill, 120, "small files recorded, the large one part-way")
    assert at_kill.part_count == SIZE // PART and BIG not in manifest_at_kill
    stack.kill_task(DAG_ID, run_id, TASK_ID)

    assert stack.wait_for_run(DAG_ID, run_id, timeout=180) == "success", stack.run_report(DAG_ID, run_id)
    tries = stack.tries(DAG_ID, run_id, TASK_ID)
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    result = stack.xcom(DAG_ID, run_id, TASK_ID)
    # try 2 planned only the large file: every small file was in the manifest it read
    assert [a["path"] for a in result["actions"]] == [BIG], result["actions"]
    assert (result["uploaded"], result["skipped"], result["failed"]) == (1, SMALL_FILES, 0)

    # no small file recorded at the kill went again: try 2 sent none (try 1 may have repeated a PUT the
    # emulator's request limit refused with a 429; each small file was accepted exactly once)
    try2_start = datetime.fromisoformat(tries[1]["start_date"]).timestamp()
    puts = [r for r in emu.requests("files.put") if r.path.startswith(f"{target}/small/")]
    by_try2 = sorted(r.path for r in puts if r.time - r.duration_s >= try2_start)
    assert by_try2 == [], by_try2
    accepted = sorted(r.path for r in puts if 200 <= r.status < 300)
    assert accepted == [f"{target}/{rel}" for rel in small]

    # the large file: the kill landed part-way (try 2 resumed some parts and sent the others), and try 2
    # sent exactly the parts missing from the checkpoint it resumed
    assert len(at_kill.parts) * PART <= result["bytes_resumed"] < SIZE and result["bytes_resumed"] % PART == 0
    resumed = {"parts_resumed": result["bytes_resumed"] // PART}
    check_only_unfinished_parts_resent(emu, big_dest, tries, at_kill, resumed, parallelism=PARALLELISM)

    # the Volume holds every file byte for byte, the manifest lists each with its SHA-256, and no
    # per-file checkpoint is left in the task state store
    for rel, src in files.items():
        assert sha256_file(emu.local_path(f"{target}/{rel}")) == sha256_file(src), rel
    manifest = manifest_files(emu, target)
    assert {rel: e["sha256"] for rel, e in manifest.items()} == {
        rel: sha256_file(src) for rel, src in files.items()
    }
    store = stack.state_store(DAG_ID, run_id, TASK_ID)
    assert not [k for k in store if ".file." in k], store
