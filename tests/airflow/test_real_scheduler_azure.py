"""Blob -> Volume resume on retry, proven with a real Airflow scheduler: the first try of
AzureBlobToDatabricksVolumeOperator is SIGKILLed half-way, the scheduler's retry must send only the
parts the first try had not finished, and read from Azurite only what it had not sent.

The blob lives in Azurite (reached through a rule-less fault proxy, which counts the bytes Azurite
serves), the Volume in the Files API emulator (which counts the bytes it receives per part). Checkpoints
are read through Airflow's public REST API. The example DAG ``azure_blob_volume_roundtrip`` runs on the
same stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.faultproxy import FaultProxy
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.airflow.resume_accounting import check_only_unfinished_parts_resent
from tests.airflow.stack import REPO, AirflowStack, wait_for
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

VOL = "/Volumes/main/default/landing"
SIZE = 256 * MiB
PART = 8 * MiB  # 32 parts: half-way is a clear point, and a part ends every 0.25 s at the pace below
PARALLELISM = 4
BANDWIDTH_MIB_S = 32  # the copy takes about 8 s, so a poll every 0.5 s sees it cross 50 %
CONTAINER = "resume"
RESUME_DAG = "resume_blob_to_volume"
EXAMPLE_DAG = "azure_blob_volume_roundtrip"
# HTTP status lines and headers of the few dozen range GETs and property reads, on top of the bodies
HEADER_SLACK = 1 * MiB


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    with FilesApiEmulator(tmp_path_factory.mktemp("files-root"), volumes=["main.default.landing"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def blob_proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    """No rules: the stack's wasb connection goes through it only so that Azurite's bytes can be counted."""
    with FaultProxy(("127.0.0.1", azurite.port)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test DAG and the example DAG side by side (links, so tracebacks name the real files)."""
    folder = tmp_path_factory.mktemp("dags")
    (folder / "resume_azure.py").symlink_to(REPO / "tests" / "airflow" / "dags" / "resume_azure.py")
    (folder / "azure_blob_volume.py").symlink_to(REPO / "dags" / "azure_blob_volume.py")
    return folder


@pytest.fixture(scope="module")
def stack(
    emulator: FilesApiEmulator,
    azurite: Azurite,
    blob_proxy: FaultProxy,
    dags_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowStack]:
    databricks = {
        "conn_type": "databricks",
        "host": emulator.url,
        "password": emulator.token,
        "extra": {"retry_timeout_seconds": 30},
    }
    proxied = azurite.connection_string(endpoint=f"http://127.0.0.1:{blob_proxy.port}/{azurite.account_name}")
    wasb = {"conn_type": "wasb", "extra": {"connection_string": proxied}}
    env = {
        "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(databricks),
        "AIRFLOW_CONN_WASB_DEFAULT": json.dumps(wasb),
    }
    with AirflowStack(tmp_path_factory.mktemp("airflow-azure"), dags_folder, env) as airflow:
        airflow.wait_for_dag(RESUME_DAG)
        airflow.wait_for_dag(EXAMPLE_DAG)
        yield airflow


def service(azurite: Azurite) -> BlobServiceClient:
    """Straight to Azurite (not through the proxy), for setting up and checking blobs."""
    return BlobServiceClient.from_connection_string(azurite.connection_string())


def put_blob(azurite: Azurite, container: str, name: str, src: Path) -> None:
    client = service(azurite).get_container_client(container)
    with contextlib.suppress(ResourceExistsError):
        client.create_container()
    with open(src, "rb") as f:
        client.upload_blob(name, f, length=src.stat().st_size, max_concurrency=4, validate_content=True)


def blob_sha256(azurite: Azurite, container: str, name: str) -> str:
    h = hashlib.sha256()
    for chunk in service(azurite).get_blob_client(container, name).download_blob(max_concurrency=4).chunks():
        h.update(chunk)
    return h.hexdigest()


def volume_sha256(emu: FilesApiEmulator, path: str) -> str:
    """Download the Volume file over the Files API (what a reader of the Volume would get)."""
    h = hashlib.sha256()
    with requests.get(
        f"{emu.url}/api/2.0/fs/files{path}",
        headers={"Authorization": f"Bearer {emu.token}"},
        stream=True,
        timeout=60,
    ) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def checkpoint(stack: AirflowStack, run_id: str) -> UploadCheckpoint | None:
    store = stack.state_store(RESUME_DAG, run_id, "copy")
    head = store.get("checkpoint")
    if head is None:
        return None
    segments = [store[f"checkpoint.seg.{i}"] for i in range(head["segments"])]
    return UploadCheckpoint.from_records(head, segments, "azure_blob.to_volume")


def test_killed_blob_to_volume_copy_resumes_on_retry(
    stack: AirflowStack, emulator: FilesApiEmulator, azurite: Azurite, blob_proxy: FaultProxy, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "big.bin", SIZE, seed=51)
    blob = f"big/{uuid.uuid4().hex}.bin"
    put_blob(azurite, CONTAINER, blob, src)
    dest = f"{VOL}/azure-resume/{uuid.uuid4().hex}.bin"
    served_before = blob_proxy.stats().bytes_server_to_client
    run_id = stack.trigger(
        RESUME_DAG,
        {"container": CONTAINER, "blob": blob, "volume_path": dest, "bandwidth_mib_s": BANDWIDTH_MIB_S},
    )

    def half_done() -> UploadCheckpoint | None:
        cp = checkpoint(stack, run_id)
        return cp if cp is not None and len(cp.parts) >= cp.part_count // 2 else None

    at_kill = wait_for(half_done, 180, "the Blob -> Volume checkpoint to reach 50%")
    assert at_kill.part_count == SIZE // PART and len(at_kill.parts) < at_kill.part_count
    progress = stack.xcom(RESUME_DAG, run_id, "copy", "checkpoint")  # the UI mirror
    assert progress["kind"] == "azure_blob.to_volume" and progress["percent"] >= 25
    assert "session_token" not in progress
    ti = stack.task_instance(RESUME_DAG, run_id, "copy")
    os.kill(int(ti["pid"]), signal.SIGKILL)

    assert stack.wait_for_run(RESUME_DAG, run_id) == "success", stack.run_report(RESUME_DAG, run_id)
    tries = stack.tries(RESUME_DAG, run_id, "copy")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    result = stack.xcom(RESUME_DAG, run_id, "copy")
    # try 2 started from try 1's checkpoint (parts finished after our snapshot may be in it too)
    assert result["parts_resumed"] >= len(at_kill.parts)
    assert result["bytes"] == SIZE and result["parts"] == at_kill.part_count

    # Volume side: exactly the parts missing from the resumed checkpoint went again
    account = check_only_unfinished_parts_resent(
        emulator, dest, tries, at_kill, result, parallelism=PARALLELISM
    )
    unsaved = account.unsaved

    # Blob side: each range was read at least once; read again only for a part a worker held at the
    # kill (each of the PARALLELISM workers reads one part at a time) or one of the unsaved parts
    served = blob_proxy.stats().bytes_server_to_client - served_before
    bound = SIZE + (PARALLELISM + len(unsaved)) * PART + HEADER_SLACK
    assert SIZE <= served <= bound, f"Azurite served {served} bytes ({len(unsaved)} unsaved parts)"

    assert volume_sha256(emulator, dest) == sha256_file(src)
    assert stack.state_store(RESUME_DAG, run_id, "copy") == {}  # checkpoint deleted on success


def test_example_dag_round_trip_on_the_scheduler(
    stack: AirflowStack, emulator: FilesApiEmulator, azurite: Azurite, tmp_path: Path
) -> None:
    size_mib, part_mib = 24, 8
    container = "adt-example"
    conf = {
        "size_mib": size_mib,
        "part_size_mib": part_mib,
        "local_dir": str(tmp_path),
        "container": container,
        "blob_dir": "example",
        "volume_dir": f"{VOL}/azure-example",
    }
    run_id = stack.trigger(EXAMPLE_DAG, conf)
    assert stack.wait_for_run(EXAMPLE_DAG, run_id) == "success", stack.run_report(EXAMPLE_DAG, run_id)

    source = sha256_file(tmp_path / "azure_source.bin")
    assert (tmp_path / "azure_source.bin").stat().st_size == size_mib * MiB
    summary = stack.xcom(EXAMPLE_DAG, run_id, "verify")
    assert summary["sha256"] == source and summary["sha256_match"] is True
    assert summary["bytes"] == size_mib * MiB
    steps = ("upload_blob", "blob_to_volume", "volume_to_blob", "download")
    assert sorted(summary["mib_per_s"]) == sorted(steps)
    assert all(summary["mib_per_s"][step] > 0 for step in steps)

    # every hop holds the source's bytes, each read back independently of the DAG
    results = {step: stack.xcom(EXAMPLE_DAG, run_id, step) for step in steps}
    for step in ("upload_blob", "blob_to_volume", "volume_to_blob"):  # the part/block size Param took
        assert results[step]["parts"] == size_mib // part_mib and results[step]["parts_resumed"] == 0, step
    assert volume_sha256(emulator, summary["volume_path"]) == source
    blobs = sorted(b.name for b in service(azurite).get_container_client(container).list_blobs())
    assert [b.rsplit("/", 1)[-1] for b in blobs] == ["from_volume.bin", "source.bin"]
    assert all(blob_sha256(azurite, container, b) == source for b in blobs)
    assert sha256_file(tmp_path / "azure_roundtrip.bin") == source
    assert results["download"]["verified"][0] == "size"
    for step in steps:  # a finished transfer leaves no checkpoint behind
        assert stack.state_store(EXAMPLE_DAG, run_id, step) == {}, step
