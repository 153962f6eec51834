"""The Azure operators outside a scheduler (Azurite + the Files emulator): templated arguments, the
checkpoint lifecycle in the task state store, the seed's resume/delete_existing switches, fail-fast."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_databricks_transfer.operators.azure_blob import (
    AzureBlobToDatabricksVolumeOperator,
    AzureBlobToLocalFilesystemOperator,
    DatabricksVolumeToAzureBlobOperator,
    LocalFilesystemToAzureBlobOperator,
)
from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import DictStore, MiB, context, make_file, sha256_file

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"


class RecordingTi:
    """Stands in for the task instance: records the XCom mirror of the checkpoint."""

    def __init__(self) -> None:
        self.pushed: list[dict[str, object]] = []

    def xcom_push(self, key: str, value: dict[str, object]) -> None:
        self.pushed.append({"key": key, **value})


@pytest.fixture
def wasb(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    conn_id = f"wasb_{uuid.uuid4().hex[:8]}"
    conn = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string()}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


@pytest.fixture
def container() -> str:
    return f"ops-{uuid.uuid4().hex[:12]}"


def test_local_blob_volume_round_trip_with_templates(
    wasb: str, conn: str, container: str, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "model.bin", 20 * MiB + 5, seed=3)
    params = {"container": container, "name": "models/model.bin", "block": str(4 * MiB)}
    up = LocalFilesystemToAzureBlobOperator(
        task_id="up",
        wasb_conn_id=wasb,
        local_path=str(src),
        container_name="{{ params.container }}",
        blob_name="{{ params.name }}",
        block_size_bytes="{{ params.block }}",
        single_put_threshold_bytes=1,
        create_container=True,
    )
    up.render_template_fields({"params": params})
    store, ti = DictStore(), RecordingTi()
    result = up.execute(context(task_state_store=store, ti=ti))
    assert (result["mode"], result["parts"], result["bytes"]) == ("multipart", 6, src.stat().st_size)
    assert result["sha256"] == sha256_file(src)
    assert store.data == {}  # the checkpoint is deleted on success (a Clear must start over)
    assert ti.pushed[-1]["phase"] == "done"
    assert not any("sig=" in json.dumps(p) or "AccountKey" in json.dumps(p) for p in ti.pushed)

    to_volume = AzureBlobToDatabricksVolumeOperator(
        task_id="to_volume",
        wasb_conn_id=wasb,
        databricks_conn_id=conn,
        container_name=container,
        blob_name="models/model.bin",
        volume_path=f"{VOL}/copies/model.bin",
        part_size_bytes=str(5 * MiB),
    )
    copied = to_volume.execute(context(task_state_store=DictStore(), ti=None))
    assert copied["parts"] == 5 and copied["source"].startswith("azure://")
    assert sha256_file(files_api_emulator.local_path(f"{VOL}/copies/model.bin")) == sha256_file(src)

    back = DatabricksVolumeToAzureBlobOperator(
        task_id="back",
        wasb_conn_id=wasb,
        databricks_conn_id=conn,
        container_name=container,
        blob_name="back/model.bin",
        volume_path=f"{VOL}/copies/model.bin",
    )
    back.execute(context(task_state_store=DictStore(), ti=None))

    down = AzureBlobToLocalFilesystemOperator(
        task_id="down",
        wasb_conn_id=wasb,
        container_name=container,
        blob_name="models/model.bin",
        local_path=str(tmp_path / "out.bin"),
        expected_sha256=sha256_file(src).upper(),
    )
    got = down.execute(context(task_state_store=DictStore(), ti=None))
    # the staged-block upload committed the file's MD5: the download checks it
    assert got["verified"][:2] == ["size", "content-md5"]
    assert got["chunks"] == 3  # 8 MiB ranges for a 20 MiB blob
    back_down = AzureBlobToLocalFilesystemOperator(
        task_id="back_down",
        wasb_conn_id=wasb,
        container_name=container,
        blob_name="back/model.bin",
        local_path=str(tmp_path / "back.bin"),
    )
    assert back_down.execute(context(task_state_store=DictStore(), ti=None))["sha256"] == sha256_file(src)


def test_delete_existing_off_keeps_the_file_and_resume_off_starts_clean(
    wasb: str, azurite: Azurite, container: str, tmp_path: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string())
    service.create_container(container)
    service.get_blob_client(container, "a.bin").upload_blob(b"remote bytes")
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"cached")
    keep = AzureBlobToLocalFilesystemOperator(
        task_id="keep",
        wasb_conn_id=wasb,
        container_name=container,
        blob_name="a.bin",
        local_path=str(dest),
        delete_existing=False,
    )
    assert keep.execute(context(task_state_store=DictStore(), ti=None))["skipped"] is True
    assert dest.read_bytes() == b"cached"

    store = DictStore()
    store.set("checkpoint", {"schema": "not ours"})  # a foreign value in the store
    fresh = AzureBlobToLocalFilesystemOperator(
        task_id="fresh",
        wasb_conn_id=wasb,
        container_name=container,
        blob_name="a.bin",
        local_path=str(dest),
        resume=False,
    )
    assert fresh.execute(context(task_state_store=store, ti=None))["bytes"] == len(b"remote bytes")
    assert dest.read_bytes() == b"remote bytes" and store.data == {}


def test_errors_no_retry_can_fix_fail_the_task_at_once(wasb: str, container: str, tmp_path: Path) -> None:
    missing = AzureBlobToLocalFilesystemOperator(
        task_id="missing",
        wasb_conn_id=wasb,
        container_name=container,
        blob_name="nothing.bin",
        local_path=str(tmp_path / "x.bin"),
    )
    with pytest.raises(AirflowFailException, match=r"RemoteNotFoundError.*container does not exist"):
        missing.execute(context(task_state_store=DictStore(), ti=None))
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_a_misspelt_verifier_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="unknown verifier"):
        AzureBlobToLocalFilesystemOperator(
            task_id="bad",
            container_name="c",
            blob_name="b",
            local_path="/tmp/x",
            verify="safetensor",
        )


def test_a_truncated_safetensors_blob_fails_verification_and_leaves_nothing(
    wasb: str, azurite: Azurite, container: str, tmp_path: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    header = json.dumps({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}).encode()
    good = len(header).to_bytes(8, "little") + header + bytes(4096)
    service = BlobServiceClient.from_connection_string(azurite.connection_string())
    service.create_container(container)
    service.get_blob_client(container, "ok.safetensors").upload_blob(good)
    service.get_blob_client(container, "cut.safetensors").upload_blob(good[:-100])

    def download(name: str) -> dict[str, object]:
        op = AzureBlobToLocalFilesystemOperator(
            task_id=f"get_{name}",
            wasb_conn_id=wasb,
            container_name=container,
            blob_name=name,
            local_path=str(tmp_path / name),
        )
        return op.execute(context(task_state_store=store, ti=None))

    store = DictStore()
    assert download("ok.safetensors")["verified"] == ["size", "content-md5", "safetensors"]
    with pytest.raises(AirflowFailException, match=r"VerificationError.*safetensors"):
        download("cut.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]  # no partial, no file
    assert set(store.data) == {"checkpoint.ui"}  # no checkpoint; the UI record keeps the failed try
    assert "VerificationError" in store.data["checkpoint.ui"]["tries"][-1]["error"]
    assert (
        hashlib.sha256((tmp_path / "ok.safetensors").read_bytes()).digest() == hashlib.sha256(good).digest()
    )
