"""AzureBlobTransferHook through real Airflow connections (AIRFLOW_CONN_* JSON) against Azurite.

Azurite is the session fixture (testing/pytest_plugin.py): a missing Azurite fails these tests, never
skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook
from airflow_databricks_transfer.testing.azurite import Azurite
from tests.venv_without import venv_without

pytestmark = pytest.mark.integration

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft)
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
OFFICIAL = "apache-airflow-providers-microsoft-azure"


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={endpoint};"
    )


def account_sas() -> str:
    return generate_account_sas(
        ACCOUNT,
        DEV_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, create=True, list=True, delete=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )


@pytest.fixture
def airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    return tmp_path


def add_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "wasb", **fields}))
    return conn_id


CONNECTIONS: dict[str, Any] = {
    "connection_string": lambda url: {"extra": {"connection_string": connection_string(url)}},
    "account_key": lambda url: {"host": url, "login": ACCOUNT, "password": DEV_KEY},
    "sas_token": lambda url: {"host": url, "extra": {"sas_token": account_sas()}},
}


@pytest.mark.parametrize("form", sorted(CONNECTIONS))
def test_round_trip_through_each_connection_form(
    form: str, azurite: Azurite, airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = add_connection(monkeypatch, f"wasb_{form}", **CONNECTIONS[form](azurite.blob_endpoint))
    hook = AzureBlobTransferHook(conn_id)
    container = f"rt-{form.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    hook.container_client(container).create_container()
    data = os.urandom(256 * 1024 + 7)
    hook.blob_client(container, "dir/data.bin").upload_blob(data)
    # a second hook: a fresh client from the same connection reads what the first wrote
    again = AzureBlobTransferHook(conn_id)
    assert again.blob_client(container, "dir/data.bin").download_blob().readall() == data
    names = [b.name for b in again.container_client(container).list_blobs()]
    assert names == ["dir/data.bin"]
    assert again.get_conn().account_name == ACCOUNT
    assert again.test_connection() == (True, "Connected: the account listed its containers")


def test_wrong_key_is_a_clear_error(
    azurite: Azurite, airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    conn_id = add_connection(
        monkeypatch, "wasb_wrong", host=azurite.blob_endpoint, login=ACCOUNT, password=wrong
    )
    hook = AzureBlobTransferHook(conn_id)
    with pytest.raises(HttpResponseError, match="failed to authenticate the request") as err:
        hook.container_client("never-made").create_container()
    assert err.value.status_code == 403  # Azurite says AuthorizationFailure, Azure AuthenticationFailed
    assert wrong not in str(err.value)
    ok, message = AzureBlobTransferHook(conn_id).test_connection()
    assert not ok and message and wrong not in message


def test_missing_connection_is_a_clear_error(airflow_home: Path) -> None:
    with pytest.raises(Exception, match=r"wasb connection 'no_such_wasb' isn't defined"):
        AzureBlobTransferHook("no_such_wasb").get_conn()


class _Unavailable(BaseHTTPRequestHandler):
    """Answers every request with 503 and counts them: the SDK would retry a 503 three times."""

    count = 0

    def _answer(self) -> None:
        type(self).count += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_sdk_sends_each_call_once_the_engine_retries(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries are off in the client: a 503 surfaces at once, after exactly one request on the wire."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{ACCOUNT}"
        conn_id = add_connection(monkeypatch, "wasb_503", host=url, login=ACCOUNT, password=DEV_KEY)
        with pytest.raises(HttpResponseError) as err:
            AzureBlobTransferHook(conn_id).blob_client("c", "b").get_blob_properties()
        assert err.value.status_code == 503
        assert _Unavailable.count == 1
    finally:
        server.shutdown()
        server.server_close()


_WITHOUT_OFFICIAL = """
import sys
sys.modules["airflow.providers.microsoft.azure"] = None  # any import of the official provider now fails
from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook
hook = AzureBlobTransferHook(sys.argv[1])
hook.container_client(sys.argv[2]).create_container()
hook.blob_client(sys.argv[2], "b.txt").upload_blob(b"no official provider")
print(hook.blob_client(sys.argv[2], "b.txt").download_blob().readall().decode())
"""


def test_works_without_the_official_azure_provider(
    azurite: Azurite, airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user may not have the Azure provider: a fresh process where it is absent still round-trips."""
    conn_id = add_connection(
        monkeypatch, "wasb_alone", extra={"connection_string": connection_string(azurite.blob_endpoint)}
    )
    python = venv_without(airflow_home / "venv", OFFICIAL)
    out = subprocess.run(
        [str(python), "-c", _WITHOUT_OFFICIAL, conn_id, f"alone-{uuid.uuid4().hex[:8]}"],
        env=dict(os.environ),  # AIRFLOW_HOME and the connection
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("no official provider")
