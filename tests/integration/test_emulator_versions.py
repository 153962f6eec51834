"""Issue #8 item 4: Last-Modified and ETag of the Files API itself, on the wire and in our client.

The reference never shows the workspace's own GET/HEAD /fs/files sending an ETag, and Last-Modified
has one-second resolution. The emulator's defaults are the harder readings (no ETag, If-Match ignored
there; a write stamped with its own second, no bumping); ``frozen_clock_s`` stands the server's clock
still so "a rewrite within the same second" happens on demand instead of by luck.
"""

from __future__ import annotations

import email.utils
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_databricks_transfer.clients.files_api import FilesApiClient, FilesApiDownloadSource
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, RemoteVersion
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions
from airflow_databricks_transfer.engine.errors import RemoteChangedError, RetryBudgetExceeded
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.testing.files_api import EmulatorSettings, FilesApiEmulator
from tests.integration.conftest import REPO, MiB, SteppedSource
from tests.integration.test_files_engine import MemorySink, workspace

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"
FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=2)
CHUNK = 1 * MiB
SIZE = 4 * MiB
# a fixed instant, on a whole second: every Date and Last-Modified the frozen server gives is this one
FROZEN = float(int(time.time()) - 3600)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.fixture
def emu(files_api_emulator: FilesApiEmulator) -> FilesApiEmulator:
    return files_api_emulator


@pytest.fixture
def http(emu: FilesApiEmulator) -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False
    s.headers["Authorization"] = f"Bearer {emu.token}"
    yield s
    s.close()


@pytest.fixture
def client(emu: FilesApiEmulator) -> Iterator[FilesApiClient]:
    c = FilesApiClient(workspace(emu), retry=FAST_RETRY)
    yield c
    c.http.close()


def files_url(emu: FilesApiEmulator, path: str) -> str:
    return f"{emu.url}/api/2.0/fs/files{path}"


def put(http: requests.Session, emu: FilesApiEmulator, path: str, data: bytes) -> None:
    resp = http.put(files_url(emu, path), data=data, params={"overwrite": "true"})
    assert resp.status_code == 204, resp.text


def presigned_get_url(http: requests.Session, emu: FilesApiEmulator, path: str) -> tuple[str, dict[str, str]]:
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    resp = http.post(
        f"{emu.url}/api/2.0/fs/create-download-url", params={"path": path, "expire_time": expire}
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    return answer["url"], {h["name"]: h["value"] for h in answer.get("headers") or []}


# ================================================================ emulator: ETag on the Files API


def test_defaults_are_the_harder_readings() -> None:
    s = EmulatorSettings()
    assert s.files_api_etag is False and s.last_modified_bump is False and s.frozen_clock_s is None


def test_files_api_sends_no_etag_and_ignores_if_match_by_default(
    emu: FilesApiEmulator, http: requests.Session
) -> None:
    path = f"{VOL}/no-etag.bin"
    put(http, emu, path, payload(1000, 1))
    head = http.head(files_url(emu, path))
    assert head.status_code == 200 and "ETag" not in head.headers and head.headers["Last-Modified"]
    got = http.get(files_url(emu, path), headers={"If-Match": '"not-the-etag"', "Range": "bytes=0-9"})
    assert got.status_code == 206 and "ETag" not in got.headers  # a server without ETags ignores it
    assert got.content == payload(1000, 1)[:10]


def test_presigned_gets_keep_their_etag_and_honour_if_match(
    emu: FilesApiEmulator, http: requests.Session
) -> None:
    path = f"{VOL}/presigned-etag.bin"
    put(http, emu, path, payload(1000, 2))
    url, headers = presigned_get_url(http, emu, path)
    bare = requests.Session()
    bare.trust_env = False
    with bare:
        first = bare.get(url, headers={**headers, "Range": "bytes=0-9"})
        assert first.status_code == 206 and first.headers["ETag"].startswith('"')
        same = bare.get(url, headers={**headers, "Range": "bytes=10-19", "If-Match": first.headers["ETag"]})
        assert same.status_code == 206 and same.content == payload(1000, 2)[10:20]
        other = bare.get(url, headers={**headers, "Range": "bytes=10-19", "If-Match": '"another"'})
        assert other.status_code == 412
        assert other.headers["Content-Type"].startswith("application/xml")
        assert b"PreconditionFailed" in other.content


def test_files_api_etag_on_sends_and_honours_it(emu: FilesApiEmulator, http: requests.Session) -> None:
    emu.update_settings(files_api_etag=True)
    path = f"{VOL}/with-etag.bin"
    put(http, emu, path, payload(1000, 3))
    etag = http.head(files_url(emu, path)).headers["ETag"]
    ok = http.get(files_url(emu, path), headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.headers["ETag"] == etag
    refused = http.get(files_url(emu, path), headers={"If-Match": '"another"'})
    assert refused.status_code == 412 and refused.json()["error_code"] == "PRECONDITION_FAILED"


# ================================================================ emulator: Last-Modified resolution


def test_a_rewrite_in_the_same_second_keeps_last_modified_and_if_unmodified_since_misses_it(
    emu: FilesApiEmulator, http: requests.Session
) -> None:
    emu.update_settings(frozen_clock_s=FROZEN + 0.25)
    path = f"{VOL}/same-second.bin"
    put(http, emu, path, payload(1000, 4))
    first = http.head(files_url(emu, path))
    assert first.headers["Last-Modified"] == first.headers["Date"] == http_date(FROZEN)
    put(http, emu, path, payload(1000, 5))  # same size, same second: indistinguishable by metadata
    assert http.head(files_url(emu, path)).headers["Last-Modified"] == first.headers["Last-Modified"]
    got = http.get(files_url(emu, path), headers={"If-Unmodified-Since": first.headers["Last-Modified"]})
    assert got.status_code == 200 and got.content == payload(1000, 5)  # the precondition cannot see it


def test_last_modified_bump_pushes_each_write_into_a_later_second(
    emu: FilesApiEmulator, http: requests.Session
) -> None:
    emu.update_settings(frozen_clock_s=FROZEN, last_modified_bump=True)
    path = f"{VOL}/bumped.bin"
    put(http, emu, path, payload(1000, 6))
    first = http.head(files_url(emu, path)).headers["Last-Modified"]
    put(http, emu, path, payload(1000, 7))
    second = http.head(files_url(emu, path)).headers["Last-Modified"]
    assert (first, second) == (http_date(FROZEN), http_date(FROZEN + 1))
    refused = http.get(files_url(emu, path), headers={"If-Unmodified-Since": first})
    assert refused.status_code == 412


def test_without_a_frozen_clock_last_modified_is_the_second_of_the_write(
    emu: FilesApiEmulator, http: requests.Session
) -> None:
    path = f"{VOL}/real-clock.bin"
    before = int(time.time())
    put(http, emu, path, payload(10, 8))
    after = int(time.time())
    head = http.head(files_url(emu, path))
    modified = int(email.utils.parsedate_to_datetime(head.headers["Last-Modified"]).timestamp())
    assert before <= modified <= after


def test_settings_through_the_control_plane(emu: FilesApiEmulator) -> None:
    s = requests.Session()
    s.trust_env = False
    with s:
        got = s.patch(
            f"{emu.url}/_emulator/settings",
            json={"files_api_etag": True, "last_modified_bump": True, "frozen_clock_s": FROZEN},
        ).json()
        assert got["files_api_etag"] is True and got["last_modified_bump"] is True
        assert got["frozen_clock_s"] == FROZEN
        back = s.patch(f"{emu.url}/_emulator/settings", json={"frozen_clock_s": None}).json()
        assert back["frozen_clock_s"] is None


@pytest.mark.parametrize("flags", [[], ["--files-api-etag", "--last-modified-bump"]], ids=["default", "kind"])
def test_cli_flags(tmp_path: Path, flags: list[str]) -> None:
    port_file = tmp_path / "port"
    module = "airflow_databricks_transfer.testing.files_api"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--root", str(tmp_path / "r"), "--port-file", str(port_file), *flags],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        s = requests.Session()
        s.trust_env = False
        with s:
            got = s.get(f"http://127.0.0.1:{port_file.read_text()}/_emulator/settings").json()
        assert (got["files_api_etag"], got["last_modified_bump"]) == (bool(flags), bool(flags))
    finally:
        proc.terminate()
        proc.wait(10)


# ================================================================ client: never splice two versions


def opts(**kw: Any) -> DownloadOptions:
    return DownloadOptions(**{"chunk_size_bytes": CHUNK, "parallelism": 1, "retry": FAST_RETRY, **kw})


@pytest.mark.parametrize("presigned", [True, False], ids=["presigned", "direct"])
def test_a_resumed_download_after_a_same_size_rewrite_in_the_same_second_never_splices(
    emu: FilesApiEmulator, client: FilesApiClient, tmp_path: Path, presigned: bool
) -> None:
    """Try 1 fetches what it dares and stops; the file is rewritten (same size) within the same server
    second; try 2 resumes from the checkpoint. Size and Last-Modified are identical, the Files API has
    no ETag: the result must be all of the new version (restart) or a failure, never a mix."""
    emu.update_settings(presigned_enabled=presigned, frozen_clock_s=FROZEN + 0.5)
    path = f"{VOL}/rewritten.bin"
    emu.seed(files=[{"path": path, "size": SIZE, "seed": 10}])
    old = emu.local_path(path).read_bytes()
    out = tmp_path / "out.bin"
    sink = MemorySink()
    source = SteppedSource(client, path, {})
    source.settle_timeout_s = 0.0  # the clock is frozen: waiting for the second to end cannot help
    first = Downloader(source, out, opts(max_total_retries=1), sink=sink)
    source.before[2] = first.cancel  # stop while the second chunk is being fetched
    with pytest.raises((Cancelled, RetryBudgetExceeded)):
        first.run()
    kept = sink.latest
    assert kept is not None
    emu.seed(files=[{"path": path, "size": SIZE, "seed": 11}])  # a real write, in the same frozen second
    new = emu.local_path(path).read_bytes()
    assert new != old and client.stat(path) == kept.remote  # nothing in the metadata tells them apart
    emu.update_settings(frozen_clock_s=None)  # time moves on before the retry
    again = DownloadCheckpoint.from_json(kept.to_json())  # as a new process would load it
    try:
        Downloader(client.download_source(path), out, opts(), sink=sink).run(again)
    except RemoteChangedError:
        assert not out.exists()
        return
    assert out.read_bytes() == new  # not try 1's chunks of the old version spliced with the new one
    if presigned:
        # the storage's ETag from try 1 was sent as If-Match and refused: that is what caught it
        assert any(r.status == 412 for r in emu.requests("presigned.download"))
    else:
        assert kept.done_chunks == frozenset()  # try 1 trusted no bytes while the second was running


@pytest.mark.parametrize("parallelism", [1, 3])
def test_direct_download_of_a_file_from_the_running_second_waits_for_it_to_end(
    emu: FilesApiEmulator, client: FilesApiClient, tmp_path: Path, parallelism: int
) -> None:
    """Without an ETag, bytes from a request sent during the file's Last-Modified second are not
    trusted: the client HEADs until the server's Date has moved on, then asks again."""
    emu.update_settings(presigned_enabled=False, frozen_clock_s=FROZEN + 0.5)
    path = f"{VOL}/fresh.bin"
    emu.seed(files=[{"path": path, "size": 3 * CHUNK + 5, "seed": 12}])
    data = emu.local_path(path).read_bytes()

    class TickingSource(FilesApiDownloadSource):
        """The server's clock ticks into the next second the moment the client starts waiting."""

        def _settle(self, pinned: RemoteVersion, cancel: threading.Event | None) -> None:
            emu.update_settings(frozen_clock_s=FROZEN + 1.5)
            super()._settle(pinned, cancel)

    out = tmp_path / "out.bin"
    source = TickingSource(client, path)
    result = Downloader(source, out, opts(parallelism=parallelism), sink=MemorySink()).run()
    assert out.read_bytes() == data and result.restarted_reason is None
    log = [(r.method, r.status, r.range) for r in emu.requests() if r.route in ("files.get", "files.head")]
    if parallelism > 1:  # ranges in flight together: each dropped and asked again after the one wait
        assert [m for m, _, _ in log].count("HEAD") == 3  # the pin, the wait, the final check
        return
    first_get = next(i for i, (m, _, _) in enumerate(log) if m == "GET")
    # the first ranged GET was answered, dropped unread, a HEAD saw the new second, the range came again
    assert log[first_get + 1][0] == "HEAD" and log[first_get + 2][:1] == ("GET",)
    assert log[first_get + 2][2] == log[first_get][2]
    assert sum(1 for m, _, _ in log if m == "GET") == 4 + 1  # four chunks, one asked twice


def test_direct_download_of_an_old_file_does_not_wait(
    emu: FilesApiEmulator, client: FilesApiClient, tmp_path: Path
) -> None:
    emu.update_settings(presigned_enabled=False, frozen_clock_s=FROZEN + 0.5)
    path = f"{VOL}/old.bin"
    emu.seed(files=[{"path": path, "size": 2 * CHUNK, "seed": 13}])
    emu.update_settings(frozen_clock_s=FROZEN + 60.5)  # written a minute ago by the server's clock
    out = tmp_path / "out.bin"
    Downloader(client.download_source(path), out, opts(), sink=MemorySink()).run()
    assert out.read_bytes() == emu.local_path(path).read_bytes()
    assert [r.method for r in emu.requests() if r.route in ("files.get", "files.head")] == [
        "HEAD",
        "GET",
        "GET",
        "HEAD",
    ]
