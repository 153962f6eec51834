"""Operator conventions against the emulator: templated download arguments, fail-fast on a changed source."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_databricks_transfer.engine.errors import SourceChangedError
from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import DictStore, MiB, context, make_file

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"


def test_download_renders_its_templated_arguments(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 3 * MiB + 11, seed=7)
    remote = f"{VOL}/tpl/src.bin"
    files_api_emulator.local_path(remote).parent.mkdir(parents=True, exist_ok=True)
    files_api_emulator.local_path(remote).write_bytes(src.read_bytes())
    offset, length = 1000, 2 * MiB + 3
    wanted = src.read_bytes()[offset : offset + length]
    op = DatabricksVolumeToLocalFilesystemOperator(
        task_id="download",
        databricks_conn_id=conn,
        volume_path=remote,
        local_path=str(tmp_path / "out.bin"),
        chunk_size_bytes="{{ params.chunk }}",
        expected_sha256="{{ params.digest }}",
        offset="{{ params.offset }}",
        length="{{ params.length }}",
    )
    params = {
        "chunk": str(MiB),
        "digest": hashlib.sha256(wanted).hexdigest().upper(),
        "offset": str(offset),
        "length": str(length),
    }
    op.render_template_fields({"params": params})
    assert (op.chunk_size_bytes, op.offset, op.length) == (str(MiB), str(offset), str(length))
    result = op.execute(context(task_state_store=DictStore(), ti=None))
    assert (tmp_path / "out.bin").read_bytes() == wanted
    assert result["chunks"] == 3  # 1 MiB chunks of the 2 MiB + 3 bytes asked for
    assert result["sha256"] == hashlib.sha256(wanted).hexdigest()


def test_a_source_changed_during_the_upload_fails_without_retries(
    conn: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", MiB, seed=3)
    # Hold the single-shot PUT at the server; while it waits, the source gets a new mtime.
    rule = files_api_emulator.add_fault(route="files.put", delay_s=2.0)
    stat = os.stat(src)

    def touch_once_the_put_arrived() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(r["id"] == rule.id and r["seen"] for r in files_api_emulator.server.faults.snapshot()):
                os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
                return
            time.sleep(0.005)

    toucher = threading.Thread(target=touch_once_the_put_arrived, daemon=True)
    toucher.start()
    op = LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload", databricks_conn_id=conn, local_path=str(src), volume_path=f"{VOL}/chg/src.bin"
    )
    with pytest.raises(AirflowFailException, match="SourceChangedError") as info:
        op.execute(context(task_state_store=DictStore(), ti=None))
    toucher.join(timeout=10)
    assert isinstance(info.value.__cause__, SourceChangedError)
