"""The transfer engine and Files API client against the emulator, with fault plans.

Every case ends byte-identical (SHA-256 against the emulator's disk or the source) or with a clear error
of the engine's tree; what was re-sent is read from the emulator's per-part byte counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.files_api import FilesApiClient, FilesApiDownloadSource
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions, temp_path_for
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    FatalError,
    InsufficientSpaceError,
    InvalidRequestError,
    RemoteChangedError,
    RemoteNotFoundError,
    SourceChangedError,
)
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink
from airflow_databricks_transfer.engine.progress import ProgressEvent
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.testing.files_api.state import parse_volume_path
from tests.integration.conftest import REPO, MiB, SteppedSource, make_file, sha256_file

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"
FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=2)


class MemorySink:
    """Keeps checkpoints in memory; ``on_save`` lets a test act at a precise point of the transfer."""

    def __init__(self, on_save: Callable[[Any], None] | None = None) -> None:
        self.latest: Any = None
        self.saves = 0
        self.cleared = 0
        self.on_save = on_save

    def save(self, checkpoint: Any, changed: frozenset[int]) -> None:
        self.latest = checkpoint
        self.saves += 1
        if self.on_save is not None:
            self.on_save(checkpoint)

    def clear(self) -> None:
        self.latest = None
        self.cleared += 1


def workspace(emu: FilesApiEmulator, token: str | None = None) -> WorkspaceClient:
    return WorkspaceClient(config=Config(host=emu.url, token=token or emu.token, retry_timeout_seconds=5))


@pytest.fixture
def client(files_api_emulator: FilesApiEmulator) -> Iterator[FilesApiClient]:
    c = FilesApiClient(workspace(files_api_emulator))
    yield c
    c.http.close()


def up_opts(**kw: Any) -> UploadOptions:
    defaults: dict[str, Any] = {
        "part_size_bytes": 5 * MiB,
        "parallelism": 3,
        "multipart_threshold_bytes": 1,
        "retry": FAST_RETRY,
        "checkpoint_interval_s": 0,  # these tests act on (and count) every single checkpoint write
    }
    return UploadOptions(**{**defaults, **kw})


def down_opts(**kw: Any) -> DownloadOptions:
    defaults: dict[str, Any] = {
        "chunk_size_bytes": 2 * MiB,
        "buffer_size_bytes": 256 * 1024,
        "parallelism": 3,
        "retry": FAST_RETRY,
        "checkpoint_interval_s": 0,
    }
    return DownloadOptions(**{**defaults, **kw})


# ---------------------------------------------------------------- happy paths


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 23 * MiB + 7])
def test_upload_is_byte_identical(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, size: int
) -> None:
    src = make_file(tmp_path / "src", size, seed=size)
    dest = f"{VOL}/up/{size}.bin"
    result = Uploader(client.upload_target(dest), src, up_opts(verify_sha256=True)).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.bytes == size and result.bytes_sent == size and result.parts_resumed == 0
    expected_parts = max(1, -(-size // (5 * MiB)))
    assert result.parts == expected_parts
    assert result.sha256_composite is not None and result.sha256_composite.endswith(f"-{expected_parts}")
    if size == 0:
        assert result.mode == "single"  # empty data always goes in one request
    else:
        assert sum(files_api_emulator.part_bytes(dest).values()) == size  # every byte sent once


def test_small_files_go_in_one_request(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 3 * MiB)
    result = Uploader(client.upload_target(f"{VOL}/small.bin"), src, UploadOptions()).run()
    assert result.mode == "single"
    assert [r.route for r in files_api_emulator.requests() if r.route.startswith("files.")] == ["files.put"]


@pytest.mark.parametrize(("offset", "length"), [(0, None), (3 * MiB + 5, None), (100, 5 * MiB), (0, 0)])
def test_download_is_byte_identical(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    offset: int,
    length: int | None,
) -> None:
    path = f"{VOL}/down.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 9 * MiB + 11, "seed": 3}])
    out = tmp_path / "out.bin"
    result = Downloader(client.download_source(path), out, down_opts(offset=offset, length=length)).run()
    data = files_api_emulator.local_path(path).read_bytes()
    want = data[offset : None if length is None else offset + length]
    assert out.read_bytes() == want
    assert result.bytes == len(want)
    assert not Path(temp_path_for(str(out))).exists()


def test_download_without_presigned_urls_reads_the_files_api(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    path = f"{VOL}/direct.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 7 * MiB, "seed": 4}])
    files_api_emulator.update_settings(presigned_enabled=False)
    out = tmp_path / "out.bin"
    Downloader(client.download_source(path), out, down_opts()).run()
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path))
    assert files_api_emulator.requests("files.get") and not files_api_emulator.requests("presigned.download")


def test_upload_falls_back_to_single_shot_without_presigned_urls(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    files_api_emulator.update_settings(presigned_enabled=False)
    src = make_file(tmp_path / "src", 12 * MiB)
    result = Uploader(client.upload_target(f"{VOL}/fallback.bin"), src, up_opts()).run()
    assert result.mode == "single"
    assert sha256_file(files_api_emulator.local_path(f"{VOL}/fallback.bin")) == sha256_file(src)


def test_gcp_resumable_protocol_with_a_cut_chunk(tmp_path: Path) -> None:
    with FilesApiEmulator(
        tmp_path / "root", volumes=["main.default.landing"], upload_protocol="resumable", cloud="GCP"
    ) as emu:
        client = FilesApiClient(workspace(emu))
        src = make_file(tmp_path / "src", 13 * MiB + 1, seed=5)
        emu.add_fault(route="presigned.resumable", nth=2, cut_after_bytes=MiB)
        result = Uploader(client.upload_target(f"{VOL}/gcp.bin"), src, up_opts(parallelism=1)).run()
        assert result.mode == "resumable"
        assert sha256_file(emu.local_path(f"{VOL}/gcp.bin")) == sha256_file(src)
        # after the cut the client asked the server how far it got (Content-Range: bytes */*)
        assert any(r.range == "bytes */*" for r in emu.requests("presigned.resumable"))


# ---------------------------------------------------------------- upload faults


@pytest.mark.parametrize(
    "fault",
    [
        {"cut_after_bytes": 2 * MiB},
        {"status": 500},
        {"status": 503, "retry_after_s": 1},
        {"status": 429, "retry_after_s": 1},
        {"status": 500, "phase": "after"},  # stored, but the client never heard it
    ],
    ids=["cut-mid-part", "500", "503-retry-after", "429-retry-after", "500-after-store"],
)
def test_part_faults_are_retried(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, fault: dict[str, Any]
) -> None:
    src = make_file(tmp_path / "src", 16 * MiB, seed=6)
    dest = f"{VOL}/faulty.bin"
    files_api_emulator.add_fault(route="presigned.part", part_number=2, **fault)
    result = Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.retries == 1
    sent = files_api_emulator.part_bytes(dest)
    assert sent[1] == 5 * MiB and sent[3] == 5 * MiB  # only part 2 was sent again
    assert 5 * MiB <= sent[2] <= 10 * MiB  # (a refused body is not read, so not counted)
    tries = [r.part_number or 0 for r in files_api_emulator.requests("presigned.part")]
    assert sorted(tries) == [1, 2, 2, 3, 4]


def test_expired_part_urls_are_refreshed(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 16 * MiB, seed=7)
    dest = f"{VOL}/expired.bin"
    files_api_emulator.add_fault(route="presigned.part", part_number=3, expire=True, times=2)
    Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    part3 = [r.status for r in files_api_emulator.requests("presigned.part") if r.part_number == 3]
    assert part3 == [403, 403, 200]
    # only the expired part's URL was minted again, starting at that part
    url_calls = files_api_emulator.requests("fs.create_upload_part_urls")
    assert len(url_calls) == 3


def test_part_urls_expiring_on_the_server_clock_are_refreshed(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    files_api_emulator.update_settings(max_url_ttl_s=1)  # the server caps URL lifetimes (1-2 s)
    src = make_file(tmp_path / "src", 11 * MiB, seed=8)
    dest = f"{VOL}/short-urls.bin"
    # ~1.7 s per part: URLs fetched in one batch up front are stale by the third part
    opts = up_opts(parallelism=1, url_batch=10, bandwidth_limit_bytes_per_s=3 * MiB)
    Uploader(client.upload_target(dest), src, opts).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert 403 in [r.status for r in files_api_emulator.requests("presigned.part")]


def test_session_lost_mid_upload_restarts_clean(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 16 * MiB, seed=9)
    dest = f"{VOL}/lost.bin"
    store = files_api_emulator.server.store
    target = client.upload_target(dest)
    put_part = target.put_part
    sent: list[str] = []

    def put_part_then_lose_the_session(*args: Any, **kwargs: Any) -> str:
        # on the data path, not from the asynchronous checkpoint saver: on a busy machine the saver can
        # run after the last part, and the test would then prove nothing
        etag = put_part(*args, **kwargs)
        sent.append(etag)
        if len(sent) == 1:
            for token in store.tokens_for(dest):
                store.abort(token)  # the server forgets the session (expiry, admin abort)
        return etag

    target.put_part = put_part_then_lose_the_session  # type: ignore[method-assign]
    result = Uploader(target, src, up_opts(parallelism=1)).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.restarted_reason is not None and "session lost" in result.restarted_reason
    assert len(files_api_emulator.requests("files.initiate_upload")) == 2


def test_a_lost_complete_answer_is_recognised(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """complete-upload succeeds on the server but the answer is lost: the retry must not fail the upload."""
    src = make_file(tmp_path / "src", 11 * MiB, seed=10)
    dest = f"{VOL}/complete.bin"
    files_api_emulator.add_fault(route="files.complete_upload", cut_after_bytes=0, phase="after")
    result = Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert next(r.dropped for r in files_api_emulator.requests("files.complete_upload")) is True
    assert result.bytes == 11 * MiB


def test_source_changed_during_upload_aborts(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 16 * MiB, seed=11)

    def touch_source(cp: UploadCheckpoint) -> None:
        if len(cp.parts) == 2:
            with open(src, "r+b") as f:
                f.write(b"changed")

    sink = MemorySink(touch_source)
    with pytest.raises(SourceChangedError, match="modification time changed during the transfer"):
        Uploader(client.upload_target(f"{VOL}/moving.bin"), src, up_opts(parallelism=1), sink=sink).run()
    assert files_api_emulator.sessions() == []  # a fatal error aborts the remote session
    assert sink.latest is None and sink.cleared >= 1
    assert not files_api_emulator.local_path(f"{VOL}/moving.bin").exists()


# ---------------------------------------------------------------- resume


def _cancel_at_half(uploader: Uploader, total_parts: int) -> Callable[[UploadCheckpoint], None]:
    def on_save(cp: UploadCheckpoint) -> None:
        if len(cp.parts) >= total_parts // 2:
            uploader.cancel()

    return on_save


def test_cancelled_upload_resumes_from_its_checkpoint(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 40 * MiB + 3, seed=12)
    dest = f"{VOL}/resume.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(), sink=sink)
    sink.on_save = _cancel_at_half(first, 9)
    with pytest.raises(Cancelled):
        first.run()
    cp = sink.latest
    assert isinstance(cp, UploadCheckpoint) and 4 <= len(cp.parts) < 9
    assert len(files_api_emulator.sessions()) == 1  # a cancel keeps the session for the next try
    before = dict(files_api_emulator.part_bytes(dest))
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(cp)
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.parts_resumed == len(cp.parts)
    after = files_api_emulator.part_bytes(dest)
    assert all(after[n] == before[n] for n in cp.parts), "finished parts must not be sent again"
    assert sink.latest is None  # cleared on success


def test_resume_with_a_changed_source_starts_clean(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 20 * MiB, seed=13)
    dest = f"{VOL}/changed.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink)
    sink.on_save = _cancel_at_half(first, 4)
    with pytest.raises(Cancelled):
        first.run()
    old = sink.latest
    make_file(src, 20 * MiB, seed=14)  # rewritten between tries
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(old)
    assert result.restarted_reason is not None and "changed" in result.restarted_reason
    assert result.parts_resumed == 0
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert files_api_emulator.sessions() == []  # the stale session was aborted, not leaked


def test_resume_after_same_mtime_rewrite_is_caught_by_part_digests(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 20 * MiB, seed=15)
    dest = f"{VOL}/sneaky.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1, verify_sha256=True), sink=sink)
    sink.on_save = _cancel_at_half(first, 4)
    with pytest.raises(Cancelled):
        first.run()
    st = src.stat()
    with open(src, "r+b") as f:  # same size, same mtime, different bytes in part 1
        f.write(b"\xff" * 10)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(verify_sha256=True), sink=sink).run(
        sink.latest
    )
    assert result.restarted_reason is not None and "SHA-256" in result.restarted_reason
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)


def test_resume_after_the_session_expired_starts_clean(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 20 * MiB, seed=16)
    dest = f"{VOL}/expired-session.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink)
    sink.on_save = _cancel_at_half(first, 4)
    with pytest.raises(Cancelled):
        first.run()
    files_api_emulator.server.store.abort(sink.latest.session_token)
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(sink.latest)
    assert result.restarted_reason is not None and "session lost" in result.restarted_reason
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)


def kill_mid_upload_and_resume(
    emu: FilesApiEmulator,
    tmp_path: Path,
    dest: str,
    *,
    parts: int,
    part: int,
    parallelism: int,
    kill_at: int,
    rate: int,
    seed: int,
) -> tuple[Path, UploadCheckpoint, dict[int, int], dict[str, Any]]:
    """SIGKILL an uploading process once its file checkpoint lists ``kill_at`` parts, then run it again
    from that checkpoint; returns the source, the checkpoint at the kill, the bytes per part received
    before the second run, and the second run's result."""
    src = make_file(tmp_path / "src", parts * part + 123, seed=seed)
    ckpt = tmp_path / "upload.ckpt.json"
    driver = str(Path(__file__).with_name("engine_driver.py"))
    args = [
        sys.executable,
        driver,
        emu.url,
        emu.token,
        str(src),
        dest,
        str(ckpt),
        str(part),
        str(parallelism),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*args, str(rate)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sink = FileCheckpointSink(ckpt, UploadCheckpoint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            cp = sink.load()
            if cp is not None and len(cp.parts) >= kill_at:
                break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = sink.load()
    assert killed_at is not None and kill_at <= len(killed_at.parts) <= parts
    sent_before = dict(emu.part_bytes(dest))
    second = subprocess.run([*args, "0"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert not ckpt.exists()
    return src, killed_at, sent_before, json.loads(second.stdout)


@pytest.mark.slow
def test_killed_process_resumes_sending_only_missing_parts(
    files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """SIGKILL an uploading process at about half; a second run from its last checkpoint finishes."""
    emu = files_api_emulator
    part, parallelism, dest = 5 * MiB, 3, f"{VOL}/killed.bin"
    src, killed_at, sent_before, result = kill_mid_upload_and_resume(
        emu, tmp_path, dest, parts=30, part=part, parallelism=parallelism, kill_at=15, rate=40 * MiB, seed=17
    )
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result["parts_resumed"] == len(killed_at.parts)
    sent_after = emu.part_bytes(dest)
    resent = sum(sent_after[n] - sent_before.get(n, 0) for n in killed_at.parts)
    assert resent == 0, "parts in the checkpoint were sent again"
    # parts finished after the last checkpoint write, or in flight at the kill, may go twice
    total_resent = sum(sent_after.values()) - src.stat().st_size
    assert total_resent <= parallelism * part + part


# ---------------------------------------------------------------- download faults and resume


def test_download_survives_cuts_and_throttling(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    path = f"{VOL}/flaky.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 10 * MiB, "seed": 18}])
    files_api_emulator.add_fault(route="presigned.download", nth=2, cut_after_bytes=300_000)
    files_api_emulator.add_fault(route="presigned.download", nth=4, status=503, retry_after_s=1)
    out = tmp_path / "out.bin"
    result = Downloader(client.download_source(path), out, down_opts()).run()
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path)) == result.sha256
    assert result.retries == 2
    # the cut range continued from where it broke instead of starting over
    cut = next(r for r in files_api_emulator.requests("presigned.download") if r.dropped)
    assert cut.bytes_out == 300_000
    assert sum(r.bytes_out for r in files_api_emulator.requests("presigned.download")) <= 10 * MiB + 300_000


@pytest.mark.parametrize("direct_io", [True, False], ids=["o_direct", "page_cache"])
def test_download_writes_and_hashes_every_byte_after_an_unaligned_cut(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, direct_io: bool
) -> None:
    """O_DIRECT writes whole aligned pieces; a cut at an odd offset, the odd-sized tail and the
    in-order hash running right behind the writers must still give the exact bytes and digest."""
    path = f"{VOL}/odd.bin"
    size = 5 * MiB + 4097
    files_api_emulator.seed(files=[{"path": path, "size": size, "seed": 25}])
    files_api_emulator.add_fault(route="presigned.download", nth=2, cut_after_bytes=300_001)
    out = tmp_path / "out.bin"
    opts = down_opts(buffer_size_bytes=MiB, parallelism=2, direct_io=direct_io)
    result = Downloader(client.download_source(path), out, opts).run()
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path)) == result.sha256
    gets = files_api_emulator.requests("presigned.download")
    cut = next(r for r in gets if r.dropped)
    assert cut.bytes_out == 300_001 and cut.range is not None
    first = int(cut.range.split("=")[1].split("-")[0])
    # the bytes that arrived before the cut were kept: the retry asked only for the rest
    assert any(r.range and r.range.startswith(f"bytes={first + 300_001}-") for r in gets)
    assert sum(r.bytes_out for r in gets) == size  # every byte served once


def test_download_url_expiry_is_refreshed(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    path = f"{VOL}/expiry.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 5 * MiB, "seed": 19}])
    files_api_emulator.add_fault(route="presigned.download", nth=2, expire=True)
    out = tmp_path / "out.bin"
    Downloader(client.download_source(path), out, down_opts()).run()
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path))
    assert len(files_api_emulator.requests("fs.create_download_url")) == 2


def test_remote_change_mid_download_restarts_and_never_splices(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    path = f"{VOL}/moving.bin"
    emu = files_api_emulator
    emu.seed(files=[{"path": path, "size": 10 * MiB, "seed": 20}])
    # before the second ranged GET, on the data path: the asynchronous checkpoint saver may act too late
    source = SteppedSource(
        client, path, {2: lambda: emu.seed(files=[{"path": path, "size": 10 * MiB, "seed": 21}])}
    )  # a new version, same size
    out = tmp_path / "out.bin"
    result = Downloader(source, out, down_opts(parallelism=1)).run()
    assert result.restarted_reason is not None and "changed" in result.restarted_reason
    assert sha256_file(out) == sha256_file(emu.local_path(path))  # all of the new version


def test_download_resumes_from_its_checkpoint(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    path = f"{VOL}/resume-down.bin"
    emu = files_api_emulator
    emu.seed(files=[{"path": path, "size": 12 * MiB + 1, "seed": 22}])
    out = tmp_path / "out.bin"
    sink = MemorySink()
    first = Downloader(client.download_source(path), out, down_opts(parallelism=1), sink=sink)

    def stop_at_half(cp: DownloadCheckpoint) -> None:
        if len(cp.done_chunks) >= 3:
            first.cancel()

    sink.on_save = stop_at_half
    with pytest.raises(Cancelled):
        first.run()
    cp = sink.latest
    assert isinstance(cp, DownloadCheckpoint) and len(cp.done_chunks) >= 3
    assert not out.exists() and Path(cp.temp_path).exists()  # nothing half-written in place

    def served() -> int:
        return sum(r.bytes_out for r in emu.requests("presigned.download"))

    served_before = served()
    sink.on_save = None
    result = Downloader(client.download_source(path), out, down_opts(), sink=sink).run(
        DownloadCheckpoint.from_json(cp.to_json())
    )
    assert sha256_file(out) == sha256_file(emu.local_path(path))
    assert result.chunks_resumed == len(cp.done_chunks)
    assert served() - served_before == 12 * MiB + 1 - cp.bytes_done  # only the missing chunks were fetched


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem, to run out of space for real (needs root, as in CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 4 MiB tmpfs to fill it needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_resumable(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tiny_disk: Path
) -> None:
    path = f"{VOL}/big-for-disk.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 6 * MiB, "seed": 23}])
    out = tiny_disk / "out.bin"
    sink = MemorySink()
    with pytest.raises(InsufficientSpaceError, match="no space left") as info:
        Downloader(client.download_source(path), out, down_opts(), sink=sink).run()
    assert "free" in str(info.value) and "needed" in str(info.value)
    assert not out.exists() and not Path(temp_path_for(str(out))).exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    Downloader(client.download_source(path), out, down_opts(), sink=sink).run(sink.latest)
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path))


def test_disk_filling_up_mid_download_keeps_finished_chunks(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tiny_disk: Path
) -> None:
    path = f"{VOL}/fills-the-disk.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 3 * MiB, "seed": 24}])
    out = tiny_disk / "out.bin"
    filler = tiny_disk / "filler"

    def fill_the_disk() -> None:  # another program takes the space meanwhile
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()

    class FillsBeforeTheLastChunk(FilesApiDownloadSource):
        """Acts just before the ranged GET of the last chunk (a checkpoint callback would race it)."""

        def open_range(self, start: int, length: int, pinned: Any, **kw: Any) -> Any:
            if start >= 2 * MiB and not filler.exists():
                fill_the_disk()
            return super().open_range(start, length, pinned, **kw)

    sink = MemorySink()
    opts = down_opts(parallelism=1, chunk_size_bytes=MiB, buffer_size_bytes=MiB)
    with pytest.raises(InsufficientSpaceError, match="finished chunks are kept"):
        Downloader(FillsBeforeTheLastChunk(client, path), out, opts, sink=sink).run()
    kept = sink.latest
    assert isinstance(kept, DownloadCheckpoint) and kept.done_chunks == {0, 1}
    assert Path(kept.temp_path).exists() and not out.exists()
    filler.unlink()  # space freed: the retry continues from the finished chunks
    result = Downloader(client.download_source(path), out, opts, sink=sink).run(kept)
    assert result.chunks_resumed == 2
    assert sha256_file(out) == sha256_file(files_api_emulator.local_path(path))


@pytest.fixture
def tiny_ext4(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB ext4 filesystem, loop-mounted (needs root and mkfs.ext4, as in CI)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("a loop-mounted ext4 needs root and mkfs.ext4 (CI has both)")
    img, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        # a mount left behind outlives the run (pytest cannot delete its folder): lazy as a last resort
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_space_is_held_on_a_local_disk_so_filling_it_meanwhile_does_not_stop_the_download(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tiny_ext4: Path
) -> None:
    """On ext4 the temp file is preallocated (for its O_DIRECT writes), so another program filling the
    disk mid-way takes only the space that is left; before, the sparse file failed with ENOSPC."""
    path = f"{VOL}/held.bin"
    files_api_emulator.seed(files=[{"path": path, "size": 6 * MiB, "seed": 26}])
    out = tiny_ext4 / "out.bin"
    filler = tiny_ext4 / "filler"

    def fill_the_disk(event: ProgressEvent) -> None:  # in the worker, once the first MiB is written
        if event.bytes_done >= MiB and not filler.exists():
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()

    opts = down_opts(parallelism=1, chunk_size_bytes=MiB, buffer_size_bytes=MiB, progress_interval_s=0.0)
    source = client.download_source(path)
    result = Downloader(source, out, opts, subscribers=[fill_the_disk]).run()
    assert filler.stat().st_size > MiB and shutil.disk_usage(tiny_ext4).free < MiB  # the disk did fill
    assert result.sha256 == sha256_file(out) == sha256_file(files_api_emulator.local_path(path))


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", 10)
    with pytest.raises(SourceChangedError, match="does not exist"):
        Uploader(client.upload_target(f"{VOL}/x"), tmp_path / "missing", up_opts()).run()
    with pytest.raises(SourceChangedError, match="not a regular file"):
        Uploader(client.upload_target(f"{VOL}/x"), tmp_path, up_opts()).run()
    with pytest.raises(InvalidRequestError, match="absolute"):
        client.upload_target("Volumes/relative")
    with pytest.raises(InvalidRequestError, match="Volumes/<catalog>"):
        Uploader(client.upload_target("/tmp/outside"), src, up_opts()).run()
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        Uploader(client.upload_target("/Volumes/main/default/nope/x"), src, up_opts()).run()
    with pytest.raises(RemoteNotFoundError):
        Downloader(client.download_source(f"{VOL}/missing"), tmp_path / "o", down_opts()).run()
    with pytest.raises(FatalError, match="folder"):
        files_api_emulator.seed(files=[{"path": f"{VOL}/here", "size": 3}])
        Downloader(client.download_source(f"{VOL}/here"), tmp_path / "no" / "dir" / "o", down_opts()).run()
    bad = FilesApiClient(workspace(files_api_emulator, token="wrong-token"))
    with pytest.raises(AuthError):
        Uploader(bad.upload_target(f"{VOL}/x"), src, up_opts()).run()


def test_overwrite_off_refuses_before_sending(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    dest = f"{VOL}/exists.bin"
    files_api_emulator.seed(files=[{"path": dest, "size": 3}])
    src = make_file(tmp_path / "src", 12 * MiB)
    with pytest.raises(AlreadyExistsError):
        Uploader(client.upload_target(dest), src, up_opts(overwrite=False)).run()
    assert files_api_emulator.requests("presigned.part") == []
    local = tmp_path / "local"
    local.write_bytes(b"keep me")
    with pytest.raises(AlreadyExistsError):
        Downloader(client.download_source(dest), local, down_opts(overwrite=False)).run()
    assert local.read_bytes() == b"keep me"


def test_full_file_sha256_is_reported(client: FilesApiClient, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src", 17 * MiB + 3, seed=30)
    result = Uploader(client.upload_target(f"{VOL}/sha.bin"), src, up_opts(full_sha256=True)).run()
    assert result.sha256 == sha256_file(src)
    small = make_file(tmp_path / "small", 10, seed=31)
    assert Uploader(
        client.upload_target(f"{VOL}/sha-small.bin"), small, UploadOptions(full_sha256=True)
    ).run().sha256 == sha256_file(small)


class _Timeout(Exception):
    pass


def test_an_exception_in_the_main_thread_stops_workers_and_keeps_the_checkpoint(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """Airflow's execution_timeout raises in the main thread while it waits for the workers."""
    src = make_file(tmp_path / "src", 30 * MiB, seed=32)
    dest = f"{VOL}/timeout.bin"
    sink = MemorySink()

    def on_alarm(signum: int, frame: object) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # one worker at 8 MiB/s: a 5 MiB part lands every ~0.6 s and the whole file needs ~3.8 s, so the
    # alarm at 1.5 s falls mid-way (the limit paces every piece now, no part goes out at full speed)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        with pytest.raises(_Timeout):
            Uploader(
                client.upload_target(dest),
                src,
                up_opts(bandwidth_limit_bytes_per_s=8 * MiB, parallelism=1),
                sink=sink,
            ).run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(sink.latest, UploadCheckpoint) and sink.latest.parts  # progress was saved
    assert len(files_api_emulator.sessions()) == 1  # and the session kept for the next try
    sent = len(files_api_emulator.requests("presigned.part"))
    time.sleep(1.0)
    assert len(files_api_emulator.requests("presigned.part")) == sent  # no worker is still sending
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(sink.latest)
    assert result.parts_resumed >= 1
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)


# ---------------------------------------------------------------- a worker clock skewed against the server's

# server clock = real time + offset: +2 h puts the worker's clock 2 h behind the server's, -2 h ahead of it
SKEWS = [pytest.param(2 * 3600, id="server-2h-ahead"), pytest.param(-2 * 3600, id="server-2h-behind")]


@pytest.mark.parametrize("offset", SKEWS)
def test_multipart_upload_with_a_skewed_clock_and_a_lost_complete_answer(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, offset: int
) -> None:
    """expire_time must be in the future on the server's clock (server ahead: a local "now + 1 h" is
    past there), and a lost complete answer is recognised by a Last-Modified stamped on the server's
    clock (server behind: it is older than the worker's local start time)."""
    emu = files_api_emulator
    emu.update_settings(clock_offset_s=offset)
    src = make_file(tmp_path / "src", 11 * MiB, seed=40)
    dest = f"{VOL}/skewed.bin"
    emu.add_fault(route="files.complete_upload", cut_after_bytes=0, phase="after")
    result = Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result.restarted_reason is None
    assert len(emu.requests("files.initiate_upload")) == 1  # recognised, not uploaded again
    assert all(r.status == 200 for r in emu.requests("fs.create_upload_part_urls"))


@pytest.mark.parametrize("offset", SKEWS)
def test_single_shot_lost_answer_with_a_skewed_clock_is_recognised(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, offset: int
) -> None:
    emu = files_api_emulator
    emu.update_settings(clock_offset_s=offset)
    dest = f"{VOL}/mine.bin"
    src = make_file(tmp_path / "src", 2 * MiB, seed=41)
    emu.add_fault(route="files.put", cut_after_bytes=0, phase="after")  # stored, answer lost
    result = Uploader(client.upload_target(dest), src, UploadOptions(overwrite=False, retry=FAST_RETRY)).run()
    assert result.mode == "single"
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert [r.status for r in emu.requests("files.put")][-1] == 409  # the retry found our own file


@pytest.mark.parametrize("offset", SKEWS)
def test_presigned_download_with_a_skewed_clock_stays_presigned(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, offset: int
) -> None:
    """A refused create-download-url would silently move the download to the workspace's own GET."""
    emu = files_api_emulator
    path = f"{VOL}/skewed-down.bin"
    src = make_file(tmp_path / "src", 5 * MiB, seed=42)
    emu.local_path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, emu.local_path(path))
    emu.update_settings(clock_offset_s=offset)
    out = tmp_path / "out.bin"
    Downloader(client.download_source(path), out, down_opts()).run()
    assert sha256_file(out) == sha256_file(src)
    assert [r.status for r in emu.requests("fs.create_download_url")] == [200]
    assert emu.requests("files.get") == []
    assert {r.status for r in emu.requests("presigned.download")} == {206}


def test_the_first_url_call_of_a_fresh_client_corrects_a_skewed_clock(
    files_api_emulator: FilesApiEmulator,
) -> None:
    """No answer seen yet, so no skew known: the refused first call's own Date fixes the retry."""
    emu = files_api_emulator
    emu.update_settings(clock_offset_s=2 * 3600)
    c = FilesApiClient(workspace(emu))
    try:
        urls = c.upload_target(f"{VOL}/x.bin").part_urls(
            emu.server.store.create_session(parse_volume_path(f"{VOL}/x.bin"), True, "multipart").token, 1, 1
        )
    finally:
        c.http.close()
    assert list(urls) == [1]
    assert [r.status for r in emu.requests("fs.create_upload_part_urls")] == [400, 200]
    assert c.clock.skew_s > 3600


# ---------------------------------------------------------------- Azure: parts without ETags
#
# An Azure Put Block answers 201 and no ETag, so the engine records "" for each part and lists "" at
# complete. Nothing on the server can be compared on resume (a Databricks client cannot list staged
# blocks), so a resume rests on what the engine can check: the checkpoint lists only parts the server
# acknowledged in this session, the source is unchanged (fingerprint; with verify_sha256 every finished
# part is re-hashed), a session the server forgot fails at the first URL request or at complete and
# restarts clean, and complete itself checks that every listed part is there.


def _azure(emu: FilesApiEmulator) -> None:
    emu.update_settings(cloud="AZURE")


def test_azure_upload_records_blank_etags_and_completes_with_them(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    _azure(files_api_emulator)
    src = make_file(tmp_path / "src", 12 * MiB + 5, seed=40)
    dest = f"{VOL}/azure/up.bin"
    sink = MemorySink()
    seen: list[UploadCheckpoint] = []
    sink.on_save = seen.append
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.parts == 3 and result.bytes_sent == 12 * MiB + 5
    assert [r.status for r in files_api_emulator.requests("presigned.part")] == [201, 201, 201]
    last = max(seen, key=lambda cp: len(cp.parts))
    assert dict(last.parts) == {1: "", 2: "", 3: ""}
    assert UploadCheckpoint.from_json(last.to_json()).parts == last.parts  # blank ETags survive a reload


def test_azure_lost_part_answer_is_resent_and_completes(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    _azure(files_api_emulator)
    src = make_file(tmp_path / "src", 11 * MiB, seed=41)
    dest = f"{VOL}/azure/lost-part.bin"
    files_api_emulator.add_fault(route="presigned.part", part_number=2, cut_after_bytes=0, phase="after")
    Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    part2 = [r for r in files_api_emulator.requests("presigned.part") if r.part_number == 2]
    assert part2[0].dropped and part2[-1].status == 201


def test_azure_lost_complete_answer_is_recognised(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    _azure(files_api_emulator)
    src = make_file(tmp_path / "src", 11 * MiB, seed=42)
    dest = f"{VOL}/azure/complete.bin"
    files_api_emulator.add_fault(route="files.complete_upload", cut_after_bytes=0, phase="after")
    result = Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    completes = files_api_emulator.requests("files.complete_upload")
    assert completes[0].dropped and completes[1].status == 404  # the session was gone on the retry
    assert result.bytes == 11 * MiB


def test_azure_killed_process_resumes_with_blank_etags(
    files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """SIGKILL an Azure upload mid-way; the next run resumes from the file checkpoint's blank ETags."""
    emu = files_api_emulator
    _azure(emu)
    dest = f"{VOL}/azure/killed.bin"
    src, killed_at, sent_before, result = kill_mid_upload_and_resume(
        emu, tmp_path, dest, parts=10, part=5 * MiB, parallelism=2, kill_at=4, rate=20 * MiB, seed=43
    )
    assert set(killed_at.parts.values()) == {""}
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result["parts_resumed"] == len(killed_at.parts)
    sent_after = emu.part_bytes(dest)
    assert all(sent_after[n] == sent_before[n] for n in killed_at.parts), "checkpointed parts went again"
    complete = emu.requests("files.complete_upload")
    assert [r.status for r in complete] == [200]


def test_azure_resume_after_the_session_expired_starts_clean(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """With no ETags to compare, a dead session must still be found out, not completed from a checkpoint."""
    _azure(files_api_emulator)
    src = make_file(tmp_path / "src", 15 * MiB, seed=44)
    dest = f"{VOL}/azure/expired.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink)
    sink.on_save = _cancel_at_half(first, 3)
    with pytest.raises(Cancelled):
        first.run()
    cp = sink.latest
    assert isinstance(cp, UploadCheckpoint) and 1 <= len(cp.parts) < 3
    files_api_emulator.server.store.expire(cp.session_token)
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(cp)
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert result.restarted_reason is not None and "session lost" in result.restarted_reason
    assert result.parts_resumed == 0


def test_azure_a_part_replaced_by_another_writer_is_caught_after_complete(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """A zombie try re-sends a finished part with other bytes: S3 ETags would fail complete-upload, Azure
    has none to list, so the engine compares the committed size with the source (the one check left)."""
    emu = files_api_emulator
    _azure(emu)
    src = make_file(tmp_path / "src", 15 * MiB + 9, seed=45)
    dest = f"{VOL}/azure/zombie.bin"
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink)
    sink.on_save = _cancel_at_half(first, 4)
    with pytest.raises(Cancelled):
        first.run()
    cp = sink.latest
    assert isinstance(cp, UploadCheckpoint) and 1 in cp.parts
    zombie = client.upload_target(dest)
    url = zombie.part_urls(cp.session_token, 1, 1)[1]
    assert zombie.put_part(url, memoryview(os.urandom(5 * MiB + 4096))) == ""
    sink.on_save = None
    with pytest.raises(RemoteChangedError, match="holds 15732745 bytes, not the source's 15728649"):
        Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(cp)
    assert [r.status for r in emu.requests("files.complete_upload")] == [200]
    assert sink.latest is None  # nothing left to resume
