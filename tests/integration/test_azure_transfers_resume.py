"""Azure transfers SIGKILLed mid-way in their own process (azure_driver.py), resumed by a new process.

What the resumed run sent is read from the driver's request hook (Put Block part numbers, ranged GETs)
and from the Files emulator's per-part byte counters; what was on the store at the kill is asked of
Azurite itself (its uncommitted block list).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient, BlobRef
from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink
from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.sources import RemoteRangeSource
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import blob_service

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("azure_driver.py")
VOL = "/Volumes/main/default/landing"
HANG_GUARD_S = 60.0  # bounds a broken run only; nothing waits for it in a passing one


def write_random(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


class Driver:
    """Runs azure_driver.py with one spec: a first run to kill, then a second run to completion."""

    def __init__(self, azurite: Azurite, spec: dict[str, Any]) -> None:
        self.spec = spec
        # the connection string goes in the environment, never on a command line
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "ADT_TEST_AZURE_CS": azurite.connection_string()}

    def start(self, **overrides: Any) -> subprocess.Popen[bytes]:
        spec = json.dumps({**self.spec, **overrides})
        return subprocess.Popen(
            [sys.executable, str(DRIVER), spec], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def kill_when(self, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ready():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the driver ended before {what} (rc {proc.returncode}):\n{err[-3000:]}")
            assert time.monotonic() < deadline, f"never happened: {what}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, "the driver finished before the kill"

    def finish(self, **overrides: Any) -> dict[str, Any]:
        proc = self.start(**overrides)
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, err.decode()[-3000:]
        result: dict[str, Any] = json.loads(out)
        return result


def staged_parts(direct: BlobServiceClient, container: str, blob: str) -> dict[int, int]:
    """Part number -> size of this package's uncommitted blocks, as Azurite lists them."""
    try:
        _, uncommitted = direct.get_blob_client(container, blob).get_block_list("uncommitted")
    except ResourceNotFoundError:
        return {}
    return {int(str(b.id).rsplit("-", 1)[1]): int(b.size) for b in uncommitted}


# ---------------------------------------------------------------- 3. local file -> blob
@pytest.mark.parametrize(
    "checkpoint_interval_s",
    [0, 3600],
    ids=["every-block-checkpointed", "blocks-staged-after-the-last-checkpoint"],
)
def test_killed_upload_resumes_and_stages_only_missing_blocks(
    azurite: Azurite, direct: BlobServiceClient, container: str, tmp_path: Path, checkpoint_interval_s: int
) -> None:
    part, parts = 2 * MiB, 12
    src = write_random(tmp_path / "src.bin", (parts - 1) * part + 12345, seed=31)
    blob, ckpt = f"up-{uuid.uuid4().hex[:8]}.bin", tmp_path / "upload.ckpt.json"
    driver = Driver(
        azurite,
        {
            "mode": "upload",
            "container": container,
            "blob": blob,
            "source": str(src),
            "checkpoint": str(ckpt),
            "part_size": part,
            "parallelism": 2,
            "checkpoint_interval_s": checkpoint_interval_s,
        },
    )
    # paced so the kill lands mid-way; an interval of an hour means one checkpoint write, at the first
    # block: every later block is on the store but not in the checkpoint
    proc = driver.start(rate=8 * MiB)
    driver.kill_when(proc, lambda: len(staged_parts(direct, container, blob)) >= 5, "5 blocks staged")
    at_kill = FileCheckpointSink(ckpt, UploadCheckpoint, "azure_blob.upload").load()
    assert at_kill is not None and at_kill.part_count == parts
    staged = staged_parts(direct, container, blob)
    assert len(staged) < parts and not direct.get_blob_client(container, blob).exists()
    if checkpoint_interval_s:
        assert len(at_kill.parts) < len(staged), "no block was staged after the last checkpoint write"

    second = driver.finish()
    result, put_blocks = second["result"], second["put_blocks"]
    # nothing on the store at the kill went again (blocks in flight at the kill may have landed since)
    assert not set(put_blocks) & set(staged), "blocks already staged were sent again"
    assert len(put_blocks) == len(set(put_blocks)) == parts - result["parts_resumed"]
    assert set(put_blocks) <= set(range(1, parts + 1))
    assert result["parts_resumed"] >= len(staged) >= len(at_kill.parts)
    assert not ckpt.exists()

    data = src.read_bytes()
    blob_client = direct.get_blob_client(container, blob)
    assert blob_client.download_blob().readall() == data
    stored_md5 = blob_client.get_blob_properties().content_settings.content_md5
    assert stored_md5 is not None and bytes(stored_md5) == hashlib.md5(data).digest()
    committed, uncommitted = blob_client.get_block_list("all")
    assert len(committed) == parts and not uncommitted


# ---------------------------------------------------------------- 4. blob -> volume, and back
def test_killed_blob_to_volume_resumes_on_both_sides_and_round_trips(
    azurite: Azurite,
    direct: BlobServiceClient,
    container: str,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
) -> None:
    emu = files_api_emulator
    part, parts = 5 * MiB, 7  # the Files API's smallest part
    data = random.Random(41).randbytes((parts - 1) * part + 777)
    blob, dest = f"to-vol-{uuid.uuid4().hex[:8]}.bin", f"{VOL}/from-azure.bin"
    direct.get_blob_client(container, blob).upload_blob(data)
    ckpt = tmp_path / "to-volume.ckpt.json"
    sink = FileCheckpointSink(ckpt, UploadCheckpoint, "azure_blob.to_volume")
    driver = Driver(
        azurite,
        {
            "mode": "to_volume",
            "container": container,
            "blob": blob,
            "checkpoint": str(ckpt),
            "part_size": part,
            "parallelism": 2,
            "files_host": emu.url,
            "files_token": emu.token,
            "volume_path": dest,
        },
    )

    def checkpointed(n: int) -> Callable[[], bool]:
        def check() -> bool:
            with contextlib.suppress(Exception):  # a checkpoint mid-replace reads as absent
                cp = sink.load()
                return cp is not None and len(cp.parts) >= n
            return False

        return check

    proc = driver.start(rate=10 * MiB)
    driver.kill_when(proc, checkpointed(3), "3 parts checkpointed")
    at_kill = sink.load()
    assert at_kill is not None and at_kill.kind == "azure_blob.to_volume" and len(at_kill.parts) < parts
    sent_before = dict(emu.part_bytes(dest))

    second = driver.finish()
    result = second["result"]
    assert result["parts_resumed"] == len(at_kill.parts)
    sent_after = emu.part_bytes(dest)
    assert all(sent_after[n] == sent_before[n] for n in at_kill.parts), "checkpointed parts went again"
    # the Azure side: only the ranges of the parts still missing were read
    assert second["ranged_gets"] == parts - result["parts_resumed"]
    assert not ckpt.exists()
    on_volume = emu.local_path(dest).read_bytes()
    assert hashlib.sha256(on_volume).hexdigest() == hashlib.sha256(data).hexdigest()

    # Volume -> Blob: the Volume file's ranges become staged blocks of a new blob, no local copy
    files = FilesApiClient(
        WorkspaceClient(config=Config(host=emu.url, token=emu.token, retry_timeout_seconds=5))
    )
    back = BlobRef(container, f"back-{uuid.uuid4().hex[:8]}.bin")
    azure = AzureBlobClient(blob_service(azurite.connection_string()))
    opts = UploadOptions(
        part_size_bytes=8 * MiB,
        multipart_threshold_bytes=1,
        limits=AZURE_BLOCKS,
        retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.2),
    )
    try:
        up = Uploader(
            azure.upload_target(back),
            RemoteRangeSource(files.download_source(dest)),
            opts,
            kind="volume.to_azure_blob",
        ).run()
    finally:
        files.http.close()
    blocks = -(-len(data) // (8 * MiB))
    assert up.parts == blocks == 4 and up.bytes == len(data)
    back_client = direct.get_blob_client(back.container, back.name)
    assert (
        hashlib.sha256(back_client.download_blob().readall()).hexdigest() == hashlib.sha256(data).hexdigest()
    )
    committed, _ = back_client.get_block_list("committed")
    assert [str(b.id)[-6:] for b in committed] == [f"{n:06d}" for n in range(1, blocks + 1)]
