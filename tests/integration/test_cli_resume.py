"""Interrupted ``adt`` transfers resume when the same command runs again: SIGKILL mid-transfer, rerun, and
count with the emulator's request log that what the checkpoint held was not fetched or sent again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink, transfer_key
from tests.integration.cli_support import (
    TOKEN,
    VOLUME,
    Emulator,
    base_env,
    cli_command,
    run_cli,
    standalone_emulator,
)
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = pytest.mark.integration
__all__ = ["standalone_emulator"]  # the module-scoped fixture


@pytest.fixture
def env(standalone_emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, DATABRICKS_HOST=standalone_emulator.url, DATABRICKS_TOKEN=TOKEN)


def kill_when(env: dict[str, str], args: list[str], ready: Callable[[], bool]) -> None:
    """Run the CLI and SIGKILL it as soon as ``ready()`` holds (polled; no timing assumption)."""
    proc = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the checkpoint never reached the kill point"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_interrupted_upload_resumes_when_run_again(
    env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path
) -> None:
    """SIGKILL mid-upload; the same command again sends only the parts the checkpoint lacks."""
    src = make_file(tmp_path / "big.bin", 24 * MiB, seed=6)
    dest = f"{VOLUME}/resume/big.bin"
    state = tmp_path / "cli-state"
    args = [
        "upload",
        str(src),
        dest,
        "--part-size",
        "5MiB",
        "--multipart-threshold",
        "1MiB",
        "--parallelism",
        "1",
        "--state-dir",
        str(state),
    ]
    ckpt = FileCheckpointSink(
        state / transfer_key("files_api.upload", str(src), dest), UploadCheckpoint, "files_api.upload"
    )
    start = standalone_emulator.last_seq()

    def two_parts() -> bool:
        found = ckpt.load() if ckpt.path.exists() else None
        return found is not None and len(found.parts) >= 2

    kill_when(env, [*args, "--bandwidth-limit", "8MiB/s"], two_parts)
    at_kill = ckpt.load()
    assert at_kill is not None
    done_before = set(at_kill.parts)
    killed_at = standalone_emulator.last_seq()
    first_try = [r for r in standalone_emulator.requests(start) if r["route"] == "presigned.part"]
    assert {r["part_number"] for r in first_try if r["status"] == 200} >= done_before

    again = run_cli(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["parts"] == 5
    assert result["parts_resumed"] >= len(done_before)
    sent_again = {
        r["part_number"] for r in standalone_emulator.requests(killed_at) if r["route"] == "presigned.part"
    }
    assert sent_again and not (sent_again & done_before)
    assert sent_again | done_before == set(range(1, 6))
    assert not ckpt.path.exists()  # removed on success

    stored = standalone_emulator.root / dest.lstrip("/")
    assert sha256_file(stored) == sha256_file(src)


def test_interrupted_download_resumes_when_run_again(
    env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path
) -> None:
    """4 MiB chunks, one at a time, slowed: killed with chunks done, the rerun fetches only the others."""
    source = f"{VOLUME}/resume/download.bin"
    standalone_emulator.control("seed", {"files": [{"path": source, "size": 20 * MiB, "seed": 7}]})
    local = tmp_path / "download.bin"
    state = tmp_path / "cli-state"
    args = [
        "download",
        source,
        str(local),
        "--part-size",
        "4MiB",
        "--parallelism",
        "1",
        "--state-dir",
        str(state),
    ]
    ckpt = FileCheckpointSink(
        state / transfer_key("files_api.download", source, str(local)),
        DownloadCheckpoint,
        "files_api.download",
    )

    def two_chunks() -> bool:
        found = ckpt.load() if ckpt.path.exists() else None
        return found is not None and len(found.done_chunks) >= 2

    kill_when(env, [*args, "--bandwidth-limit", "8MiB/s"], two_chunks)
    at_kill = ckpt.load()
    assert at_kill is not None
    done = len(at_kill.done_chunks)
    killed_at = standalone_emulator.last_seq()
    assert not local.exists()  # only the partial file so far

    again = run_cli(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["chunks"] == 5 and result["chunks_resumed"] >= done
    fetched = [r for r in standalone_emulator.requests(killed_at) if r["route"] == "presigned.download"]
    assert len(fetched) == 5 - result["chunks_resumed"]
    assert sha256_file(local) == sha256_file(standalone_emulator.root / source.lstrip("/"))
    assert not ckpt.path.exists()
