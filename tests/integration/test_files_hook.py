"""DatabricksFilesHook through a real Airflow connection (AIRFLOW_CONN_* JSON) against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from airflow_databricks_transfer.engine.download import DownloadOptions
from airflow_databricks_transfer.engine.errors import AuthError, InvalidRequestError, RemoteNotFoundError
from airflow_databricks_transfer.engine.upload import UploadOptions
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook, find_matches
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import MiB, make_file, sha256_file
from tests.venv_without import venv_without

pytestmark = pytest.mark.integration
VOL = "/Volumes/main/default/landing"


@pytest.fixture
def hook(conn: str) -> DatabricksFilesHook:
    return DatabricksFilesHook(conn)


_WITHOUT_OFFICIAL = """
import sys
sys.modules["airflow.providers.databricks"] = None  # any import of the official provider now fails
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
hook = DatabricksFilesHook(sys.argv[3])
hook.upload_file(sys.argv[1], sys.argv[2])
hook.download_file(sys.argv[2], sys.argv[1] + ".back")
print("ok")
"""


def test_works_without_the_official_databricks_provider(conn: str, tmp_path: Path) -> None:
    """The test environment has the official provider installed; a user may not: the hook must never
    need it. A fresh process where importing it fails still moves a file both ways."""
    src = make_file(tmp_path / "src.bin", 3 * MiB, seed=9)
    # Airflow itself must not know the provider either (it imports every installed provider's info)
    python = venv_without(tmp_path / "venv", "apache-airflow-providers-databricks")
    out = subprocess.run(
        [str(python), "-c", _WITHOUT_OFFICIAL, str(src), f"{VOL}/no-official/src.bin", conn],
        env=dict(os.environ),  # AIRFLOW_HOME and the connection, as the conn fixture set them
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
    assert sha256_file(Path(f"{src}.back")) == sha256_file(src)


def test_upload_download_and_file_operations(
    hook: DatabricksFilesHook, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 12 * MiB + 5, seed=1)
    dest = f"{VOL}/hook/data/src.bin"
    up = hook.upload_file(
        str(src), dest, options=UploadOptions(multipart_threshold_bytes=1, part_size_bytes=5 * MiB)
    )
    assert up.mode == "multipart" and up.parts == 3
    out = tmp_path / "out.bin"
    down = hook.download_file(dest, str(out), options=DownloadOptions(chunk_size_bytes=4 * MiB))
    assert sha256_file(out) == sha256_file(src) == down.sha256
    meta = hook.get_metadata(dest)
    assert meta is not None and meta["size"] == 12 * MiB + 5 and meta["last_modified"]
    assert meta["etag"] is None  # the workspace's HEAD sends none (the emulator's default)
    assert hook.get_metadata(f"{VOL}/hook/none") is None
    assert hook.exists(dest) and hook.exists(f"{VOL}/hook/data") and not hook.exists(f"{VOL}/hook/nope")
    hook.create_directory(f"{VOL}/hook/empty")
    names = sorted(e.name for e in hook.list_directory(f"{VOL}/hook", recursive=True))
    assert names == ["data", "empty", "src.bin"]
    hook.delete(f"{VOL}/hook", recursive=True)
    assert not hook.exists(f"{VOL}/hook")
    with pytest.raises(RemoteNotFoundError):
        hook.delete(f"{VOL}/hook")


def test_test_connection_reports_success_and_failure(
    hook: DatabricksFilesHook, files_api_emulator: FilesApiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hook.test_connection() == (True, "Connected: Unity Catalog answered")
    conn = {
        "conn_type": "databricks",
        "host": files_api_emulator.url,
        "password": "wrong",
        "extra": {"retry_timeout_seconds": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DBX_BAD", json.dumps(conn))
    bad = DatabricksFilesHook("dbx_bad")
    ok, message = bad.test_connection()
    assert not ok and "Invalid access token" in message
    with pytest.raises(AuthError):
        bad.get_metadata(f"{VOL}/x")


def test_missing_connection_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    with pytest.raises(Exception, match="isn't defined"):
        DatabricksFilesHook("no_such_connection").get_metadata(f"{VOL}/x")


def test_the_connections_http_timeout_bounds_a_silent_data_transfer(
    files_api_emulator: FilesApiEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``http_timeout_seconds`` of the connection also applies to the data path: a ranged GET whose
    server stays silent for 4 s is given up after 1 s of no progress and retried (it used to wait 60 s)."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    conn = {
        "conn_type": "databricks",
        "host": files_api_emulator.url,
        "password": files_api_emulator.token,
        "extra": {"http_timeout_seconds": 1},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DBX_SHORT", json.dumps(conn))
    path = f"{VOL}/silent.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 3 * MiB, "seed": 31}])
    files_api_emulator.add_fault(route="presigned.download", delay_s=4, times=1)
    out = tmp_path / "out.bin"
    result = DatabricksFilesHook("dbx_short").download_file(path, str(out))
    assert result.retries == 1
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path))


# ---------------------------------------------------------------- paths the Files API refuses

BAD_FILE_PATHS = [
    pytest.param(f"{VOL}/{'n' * 300}.bin", "allows 255 bytes per name", id="300-byte-name"),
    pytest.param(f"{VOL}/{chr(0xE9) * 128}", "allows 255 bytes per name", id="256-byte-utf8-name"),
    pytest.param(f"{VOL}/{'/'.join(['d' * 250] * 17)}/f.bin", "allows 4096", id="4k-path"),
    pytest.param(f"{VOL}/dir/", "may not end with '/'", id="trailing-slash"),
    pytest.param(f"{VOL}/bad\udcff.bin", "not valid Unicode", id="lone-surrogate"),
]


@pytest.mark.parametrize(("path", "why"), BAD_FILE_PATHS)
def test_a_path_the_files_api_refuses_is_a_clear_error_without_a_request(
    hook: DatabricksFilesHook, files_api_emulator: FilesApiEmulator, tmp_path: Path, path: str, why: str
) -> None:
    """Named before any request: the server's refusal of a HEAD has no body to explain it, and an
    emulator that cut the connection on a long name once turned this into a retry loop."""
    src = make_file(tmp_path / "src.bin", 1024, seed=3)
    with pytest.raises(InvalidRequestError, match=why):
        hook.upload_file(str(src), path)
    with pytest.raises(InvalidRequestError, match=why):
        hook.download_file(path, str(tmp_path / "out.bin"))
    # refused locally: no Files API request was sent, so none was retried (the SDK's bootstrap aside)
    assert [r.route for r in files_api_emulator.requests() if r.route != "well_known"] == []


def test_a_directory_path_with_a_trailing_slash_still_works(
    hook: DatabricksFilesHook, files_api_emulator: FilesApiEmulator
) -> None:
    """The server refuses a file path ending in '/': such a path can only name a directory."""
    hook.create_directory(f"{VOL}/slash/inner/")
    assert hook.exists(f"{VOL}/slash/")
    assert hook.get_metadata(f"{VOL}/slash/") is None
    assert [e.name for e in hook.list_directory(f"{VOL}/slash/")] == ["inner"]
    hook.delete(f"{VOL}/slash/", recursive=True)
    assert not hook.exists(f"{VOL}/slash/")
    assert all(r.status != 400 for r in files_api_emulator.requests())


def test_listing_copes_with_pages_any_order_and_omitted_fields(
    hook: DatabricksFilesHook, files_api_emulator: FilesApiEmulator
) -> None:
    """The real listing: entries in no particular order, two a page here, false/zero fields omitted as
    proto3 JSON does. An empty file is a file of size 0 (before issue 8 its size came back None), a
    folder has no size, and a recursive delete that removes entries while it pages still gets them all."""
    emu = files_api_emulator
    emu.update_settings(list_page_size_max=2)
    emu.seed(
        files=[
            {"path": f"{VOL}/ls/empty.csv", "size": 0},
            {"path": f"{VOL}/ls/a.csv", "size": 3},
            {"path": f"{VOL}/ls/z.txt", "size": 2},
            {"path": f"{VOL}/ls/sub/b.csv", "size": 5},
            {"path": f"{VOL}/ls/sub/deep/c.csv", "size": 1},
        ]
    )
    hook.create_directory(f"{VOL}/ls/void")
    entries = {e.path.rstrip("/"): e for e in hook.list_directory(f"{VOL}/ls", recursive=True)}
    assert len(emu.requests("directories.get")) > 4  # four folders, and the first took several pages
    sizes = {path: (e.is_directory, e.size) for path, e in entries.items()}
    assert sizes == {
        f"{VOL}/ls/empty.csv": (False, 0),
        f"{VOL}/ls/a.csv": (False, 3),
        f"{VOL}/ls/z.txt": (False, 2),
        f"{VOL}/ls/sub": (True, None),
        f"{VOL}/ls/void": (True, None),
        f"{VOL}/ls/sub/b.csv": (False, 5),
        f"{VOL}/ls/sub/deep": (True, None),
        f"{VOL}/ls/sub/deep/c.csv": (False, 1),
    }
    assert all(e.name == p.rsplit("/", 1)[-1] for p, e in entries.items())
    matches = find_matches(hook, f"{VOL}/ls/*.csv")
    assert matches == {f"{VOL}/ls/empty.csv": 0, f"{VOL}/ls/a.csv": 3}
    assert list(matches) == [
        f"{VOL}/ls/a.csv",
        f"{VOL}/ls/empty.csv",
    ]  # by path: the listing served empty first
    assert find_matches(hook, f"{VOL}/ls/*/*/*.csv") == {f"{VOL}/ls/sub/deep/c.csv": 1}
    hook.delete(f"{VOL}/ls", recursive=True)
    assert not hook.exists(f"{VOL}/ls")
