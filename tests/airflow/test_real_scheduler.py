"""Resume on retry, proven with a real Airflow scheduler: the first try is SIGKILLed mid-transfer, the
second try (started by the scheduler) must send only what the first had not finished.

What was sent is counted by the Files API emulator per part; checkpoints are read through Airflow's
public REST API (task state store), exactly as an operator of the platform would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.airflow.resume_accounting import check_only_unfinished_parts_resent
from tests.airflow.stack import REPO, AirflowStack, celery_stack, databricks_connection_env, wait_for
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VOL = "/Volumes/main/default/landing"
SIZE = 1024 * MiB
PART = 16 * MiB
PARALLELISM = 4
DAGS = REPO / "tests" / "airflow" / "dags"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    with FilesApiEmulator(tmp_path_factory.mktemp("files-root"), volumes=["main.default.landing"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def local_stack(
    emulator: FilesApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-local")
    with AirflowStack(home, DAGS, databricks_connection_env(emulator)) as stack:
        stack.wait_for_dag("resume_upload")
        stack.wait_for_dag("resume_download")
        yield stack


def upload_checkpoint(stack: AirflowStack, run_id: str) -> UploadCheckpoint | None:
    store = stack.state_store("resume_upload", run_id, "upload")
    head = store.get("checkpoint")
    if head is None:
        return None
    segments = [store[f"checkpoint.seg.{i}"] for i in range(head["segments"])]
    return UploadCheckpoint.from_records(head, segments)


def start_upload_until_half(
    stack: AirflowStack, tmp_path: Path, seed: int
) -> tuple[Path, str, str, UploadCheckpoint]:
    """Trigger a paced 1 GiB upload and return once its checkpoint shows half the parts done."""
    src = make_file(tmp_path / "big.bin", SIZE, seed=seed)
    dest = f"{VOL}/resume/{uuid.uuid4().hex}.bin"
    run_id = stack.trigger("resume_upload", {"source": str(src), "volume_path": dest, "bandwidth_mib_s": 60})

    def half_done() -> UploadCheckpoint | None:
        cp = upload_checkpoint(stack, run_id)
        return cp if cp is not None and len(cp.parts) >= cp.part_count // 2 else None

    return src, dest, run_id, wait_for(half_done, 180, "the upload checkpoint to reach 50%")


def check_upload_resumed(
    stack: AirflowStack,
    emu: FilesApiEmulator,
    dag_id: str,
    run_id: str,
    dest: str,
    src: Path,
    at_kill: UploadCheckpoint,
) -> dict[str, Any]:
    tries = stack.tries(dag_id, run_id, "upload")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    result = stack.xcom(dag_id, run_id, "upload")
    # try 2 started from try 1's checkpoint (parts finished after our snapshot may be in it too)
    assert result["parts_resumed"] >= len(at_kill.parts)
    # only the parts the kill caught went twice: in flight, or finished after the last checkpoint write
    check_only_unfinished_parts_resent(emu, dest, tries, at_kill, result, parallelism=PARALLELISM)
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert stack.state_store(dag_id, run_id, "upload") == {}  # checkpoint deleted on success
    return dict(result)


def test_killed_upload_resumes_on_retry_and_a_clear_starts_over(
    local_stack: AirflowStack, emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    stack, emu = local_stack, emulator
    src, dest, run_id, at_kill = start_upload_until_half(stack, tmp_path, seed=41)
    progress = stack.xcom("resume_upload", run_id, "upload", "checkpoint")
    assert progress["percent"] >= 25 and "session_token" not in progress  # the UI mirror
    stack.kill_task("resume_upload", run_id, "upload")
    assert stack.wait_for_run("resume_upload", run_id) == "success", stack.run_report("resume_upload", run_id)
    check_upload_resumed(stack, emu, "resume_upload", run_id, dest, src, at_kill)

    # a manual Clear of the finished task uploads from scratch rather than "resuming" a finished one
    before = sum(emu.part_bytes(dest).values())
    stack.clear("resume_upload", run_id, "upload")
    wait_for(lambda: stack.run_state("resume_upload", run_id) != "success", 30, "the cleared run to restart")
    assert stack.wait_for_run("resume_upload", run_id) == "success", stack.run_report("resume_upload", run_id)
    again = stack.xcom("resume_upload", run_id, "upload")
    assert again["parts_resumed"] == 0 and again["bytes_sent"] == SIZE
    assert sum(emu.part_bytes(dest).values()) - before == SIZE


def test_killed_download_resumes_on_retry(
    local_stack: AirflowStack, emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    stack, emu = local_stack, emulator
    path = f"{VOL}/resume/{uuid.uuid4().hex}-down.bin"
    emu.seed(files=[{"path": path, "size": SIZE, "seed": 42}])
    dest = tmp_path / "downloaded.bin"
    run_id = stack.trigger(
        "resume_download", {"volume_path": path, "destination": str(dest), "bandwidth_mib_s": 60}
    )

    def half_done() -> DownloadCheckpoint | None:
        raw = stack.state_store("resume_download", run_id, "download").get("checkpoint")
        cp = DownloadCheckpoint.from_dict(raw) if raw else None
        return cp if cp is not None and len(cp.done_chunks) >= cp.chunk_count // 2 else None

    at_kill = wait_for(half_done, 180, "the download checkpoint to reach 50%")
    served_before = sum(r.bytes_out for r in emu.requests("presigned.download") if r.path == path)
    stack.kill_task("resume_download", run_id, "download")
    assert not dest.exists()  # never a half-written file in place
    assert stack.wait_for_run("resume_download", run_id) == "success", stack.run_report(
        "resume_download", run_id
    )
    tries = stack.tries("resume_download", run_id, "download")
    assert [t["state"] for t in tries] == ["failed", "success"]
    result = stack.xcom("resume_download", run_id, "download")
    assert result["chunks_resumed"] >= len(at_kill.done_chunks)
    served = sum(r.bytes_out for r in emu.requests("presigned.download") if r.path == path)
    assert served - served_before <= SIZE - at_kill.bytes_done + PARALLELISM * PART
    assert sha256_file(dest) == sha256_file(emu.local_path(path)) == result["sha256"]
    assert stack.state_store("resume_download", run_id, "download") == {}
    assert not (tmp_path / ".downloaded.bin.adt-partial").exists()


# ---------------------------------------------------------------- CeleryExecutor: try 2 on another worker


@pytest.fixture
def celery_airflow(emulator: FilesApiEmulator, tmp_path: Path) -> Iterator[AirflowStack]:
    with celery_stack(tmp_path / "airflow-celery", DAGS, databricks_connection_env(emulator)) as stack:
        stack.wait_for_dag("resume_upload")
        yield stack


def _worker_of(stack: AirflowStack, pid: int) -> str | None:
    """Which Celery worker (by its process) is an ancestor of ``pid``."""
    workers = {proc.pid: name for name, proc in stack.procs.items() if name in stack.celery_workers}
    while pid > 1:
        if pid in workers:
            return workers[pid]
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return None
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return None


def test_celery_worker_killed_whole_and_the_retry_resumes_on_the_other_worker(
    celery_airflow: AirflowStack, emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    stack, emu = celery_airflow, emulator
    src, dest, run_id, at_kill = start_upload_until_half(stack, tmp_path, seed=43)
    pid = int(stack.task_instance("resume_upload", run_id, "upload")["pid"])
    first = _worker_of(stack, pid)
    assert first in ("w1", "w2"), f"task process {pid} is not under a Celery worker"
    stack.kill_group(first)  # the whole worker dies: its supervisor and the task with it
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    other = "w2" if first == "w1" else "w1"

    def try2_worker() -> str | None:
        ti = stack.task_instance("resume_upload", run_id, "upload")
        if ti["try_number"] == 2 and ti["state"] == "running" and ti.get("pid"):
            return _worker_of(stack, int(ti["pid"])) or "unknown"
        return None

    assert wait_for(try2_worker, 180, "try 2 to start") == other
    assert stack.wait_for_run("resume_upload", run_id, timeout=300) == "success", stack.run_report(
        "resume_upload", run_id
    )
    check_upload_resumed(stack, emu, "resume_upload", run_id, dest, src, at_kill)
