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


def kill_when(
    env: dict[str, str], args: list[str], ready: Callable[[], bool], sig: int = signal.SIGKILL
) -> tuple[int, str]:
    """Run the CLI and send ``sig`` as soon as ``ready()`` holds (polled; no timing assumption);
    (exit code, stderr)."""
    proc = subprocess.Popen(
        cli_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the checkpoint never reached the kill point"
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


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
    """4 MiB chunks one at a time, slowed: interrupted with chunks done, the rerun fetches only the rest."""
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

    # Ctrl-C: the workers stop, the checkpoint stays, exit code 130
    code, err = kill_when(env, [*args, "--bandwidth-limit", "8MiB/s"], two_chunks, signal.SIGINT)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "adt: interrupted; run the same command again to resume"
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


def test_an_interrupted_sync_resumes_its_large_file(
    env: dict[str, str], standalone_emulator: Emulator, tmp_path: Path
) -> None:
    """The sync's per-file checkpoints live in the state dir too: killed mid-way through a multipart file,
    the same sync again sends only that file's missing parts (and nothing already recorded)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "small.txt").write_text("small")
    big = make_file(tree / "big.bin", 20 * MiB, seed=9)
    target = f"{VOLUME}/resume-sync"
    state = tmp_path / "cli-state"
    args = ["sync", str(tree), target, "--part-size", "5MiB", "--multipart-threshold", "5MiB"]
    args += ["--parallelism", "1", "--state-dir", str(state)]
    key = transfer_key("files_api.upload", str(big), f"{target}\nbig.bin")
    ckpt = FileCheckpointSink(state / key, UploadCheckpoint, "files_api.upload")
    start = standalone_emulator.last_seq()

    def two_parts() -> bool:
        found = ckpt.load() if ckpt.path.exists() else None
        return found is not None and len(found.parts) >= 2

    kill_when(env, [*args, "--bandwidth-limit", "8MiB/s"], two_parts)
    at_kill = ckpt.load()
    assert at_kill is not None
    done_before = set(at_kill.parts)
    killed_at = standalone_emulator.last_seq()
    assert standalone_emulator.requests(start)

    again = run_cli(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["failed"] == 0 and result["bytes_resumed"] >= len(done_before) * 5 * MiB
    sent_again = {
        r["part_number"] for r in standalone_emulator.requests(killed_at) if r["route"] == "presigned.part"
    }
    assert sent_again and not (sent_again & done_before)
    assert sha256_file(standalone_emulator.root / target.lstrip("/") / "big.bin") == sha256_file(big)
    assert not ckpt.path.exists()
