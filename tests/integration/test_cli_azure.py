"""The Azure verbs of ``adt`` end to end: subprocesses against Azurite and the standalone Files emulator."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from airflow_databricks_transfer.testing.azurite import Azurite
from tests.integration.cli_support import (
    TOKEN,
    VOLUME,
    Emulator,
    base_env,
    error_line,
    run_cli,
    standalone_emulator,
)
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = pytest.mark.integration
__all__ = ["standalone_emulator"]  # the module-scoped fixture


def test_blob_round_trip_and_copies_through_a_volume(
    azurite: Azurite, standalone_emulator: Emulator, tmp_path: Path
) -> None:
    container = f"cli-{uuid.uuid4().hex[:8]}"
    src = make_file(tmp_path / "data set.bin", 3 * MiB + 123, seed=11)
    env = base_env(
        tmp_path,
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string(),
        DATABRICKS_HOST=standalone_emulator.url,
        DATABRICKS_TOKEN=TOKEN,
    )

    # staged blocks (1 MiB) into a new container
    up = run_cli(
        env,
        "azure-upload",
        str(src),
        f"{container}/in/data set.bin",
        "--create-container",
        "--part-size",
        "1MiB",
        "--multipart-threshold",
        "1MiB",
        "--json",
    )
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["parts"] == 4

    # a blob URL (path style, as Azurite's) with the account key from the environment
    key_env = {k: v for k, v in env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    key_env["AZURE_STORAGE_KEY"] = azurite.account_key
    url = f"{azurite.blob_endpoint}/{container}/in/data%20set.bin"
    back = tmp_path / "back.bin"
    down = run_cli(key_env, "azure-download", url, str(back), "--json")
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == src.read_bytes()
    assert "done" in down.stderr

    # blob -> Volume -> blob, no local copy
    dest = f"{VOLUME}/azure/data set.bin"
    to_volume = run_cli(env, "blob-to-volume", f"{container}/in/data set.bin", dest, "--json")
    assert to_volume.returncode == 0, to_volume.stderr
    assert sha256_file(standalone_emulator.root / dest.lstrip("/")) == sha256_file(src)
    to_blob = run_cli(env, "volume-to-blob", dest, f"{container}/out/copy.bin", "--json")
    assert to_blob.returncode == 0, to_blob.stderr
    assert json.loads(to_blob.stdout)["bytes"] == src.stat().st_size

    # a wasb Airflow connection instead of the environment (this one imports Airflow)
    wasb = json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string()}})
    conn_env = base_env(tmp_path, AIRFLOW_CONN_CLI_WASB=wasb, AIRFLOW_HOME=str(tmp_path / "airflow"))
    via_conn = run_cli(
        conn_env, "azure-download", f"{container}/out/copy.bin", str(tmp_path), "--conn-id", "cli_wasb"
    )
    assert via_conn.returncode == 0, via_conn.stderr
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()

    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string())
    copied = service.get_blob_client(container, "out/copy.bin").download_blob().readall()
    assert copied == src.read_bytes()
    for proc in (up, down, to_volume, to_blob, via_conn):
        assert azurite.account_key not in proc.stdout + proc.stderr
        assert TOKEN not in proc.stdout + proc.stderr


def test_dry_run_sends_nothing_and_failures_are_one_line(azurite: Azurite, tmp_path: Path) -> None:
    env = base_env(tmp_path, AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string())
    src = make_file(tmp_path / "d.bin", 1000, seed=12)
    dry = run_cli(
        env, "azure-upload", str(src), "dry-container/d.bin", "--create-container", "--dry-run", "--json"
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) | {"source": None} == {
        "dry_run": True,
        "source": None,
        "destination": "dry-container/d.bin",
        "bytes": 1000,
        "would_resume": False,
    }

    # the dry run made no container: the blob is not found, said in one line
    missing = run_cli(env, "azure-download", "dry-container/d.bin", str(tmp_path / "x.bin"))
    assert missing.returncode == 1
    assert error_line(missing).startswith("adt: error: not found:"), missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    bare = run_cli(base_env(tmp_path), "azure-download", "c/x.bin", str(tmp_path / "x.bin"))
    assert bare.returncode == 1
    assert "no Azure storage account" in error_line(bare)
