"""Issue #7, upload path: no false success, no fatal blips, honest retries. Real sockets, the emulator.

Each test names the defect it reproduces; each failed on the code before its fix (see the report).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.engine import upload as upload_mod
from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.download import Downloader
from airflow_databricks_transfer.engine.errors import (
    InvalidRequestError,
    RetryBudgetExceeded,
    SourceChangedError,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.engine.saver import CoalescingSaver
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import MiB, make_file, sha256_file, throttled, through_frozen_window
from tests.integration.test_files_engine import FAST_RETRY, MemorySink, down_opts, up_opts, workspace

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"


@pytest.fixture
def client(files_api_emulator: FilesApiEmulator) -> Iterator[FilesApiClient]:
    c = FilesApiClient(workspace(files_api_emulator), retry=FAST_RETRY)
    yield c
    c.http.close()


@pytest.fixture
def gcp(tmp_path: Path) -> Iterator[FilesApiEmulator]:
    with FilesApiEmulator(
        tmp_path / "gcp-root", volumes=["main.default.landing"], upload_protocol="resumable", cloud="GCP"
    ) as emu:
        yield emu


def _when_fired(emu: FilesApiEmulator, rule_id: str, action: Any) -> threading.Thread:
    """Run ``action`` as soon as the fault rule has fired (its request is then held by its delay)."""

    def watch() -> None:
        while not any(f["id"] == rule_id and f["fired"] for f in emu.server.faults.snapshot()):
            threading.Event().wait(0.005)
        action()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------- item 1: lost session at complete


@pytest.mark.parametrize("etags", [True, False], ids=["etag", "no-etag"])
@pytest.mark.parametrize("how", ["abort", "expire"])
def test_lost_session_with_an_old_same_size_file_restarts_instead_of_claiming_success(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, how: str, etags: bool
) -> None:
    emu = files_api_emulator
    emu.update_settings(files_api_etag=etags)
    dest = f"{VOL}/yesterday.bin"
    emu.seed(files=[{"path": dest, "size": 11 * MiB, "seed": 99}])  # yesterday's file, same size
    src = make_file(tmp_path / "src", 11 * MiB, seed=100)
    ended = threading.Event()

    def end_session_before_complete(cp: UploadCheckpoint) -> None:
        if cp.phase == "completing" and not ended.is_set():
            ended.set()
            assert getattr(emu, f"{how}_sessions")(dest) == 1

    sink = MemorySink(end_session_before_complete)
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run()
    assert ended.is_set()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)  # not yesterday's bytes
    assert result.restarted_reason is not None
    assert "version that was there before this upload" in result.restarted_reason
    assert len(emu.requests("files.initiate_upload")) == 2
    assert sink.latest is None


@pytest.mark.parametrize("etags", [True, False], ids=["etag", "no-etag"])
def test_a_lost_complete_answer_over_an_old_same_size_file_is_still_success(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, etags: bool
) -> None:
    emu = files_api_emulator
    emu.update_settings(files_api_etag=etags)
    dest = f"{VOL}/replaced.bin"
    # an old file, stamped a minute ago by the server's clock: without ETags (and with the real 1 s
    # Last-Modified) one written in the same second as this upload could not be told from ours, and the
    # client would rightly restart (test_emulator_versions covers that case)
    emu.update_settings(frozen_clock_s=time.time() - 60)
    emu.seed(files=[{"path": dest, "size": 11 * MiB, "seed": 98}])
    emu.update_settings(frozen_clock_s=None)
    src = make_file(tmp_path / "src", 11 * MiB, seed=101)
    emu.add_fault(route="files.complete_upload", cut_after_bytes=0, phase="after")
    result = Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result.restarted_reason is None
    assert len(emu.requests("files.initiate_upload")) == 1  # recognised, not uploaded twice


def test_a_resumed_v1_checkpoint_cannot_prove_a_lost_session(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """A checkpoint from before schema 2 knows nothing of the prior version: restart, never assume."""
    emu = files_api_emulator
    dest = f"{VOL}/old-checkpoint.bin"
    emu.seed(files=[{"path": dest, "size": 11 * MiB, "seed": 97}])
    src = make_file(tmp_path / "src", 11 * MiB, seed=102)
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(), sink=sink)

    def cancel_when_completing(cp: UploadCheckpoint) -> None:
        if len(cp.parts) == cp.part_count:
            first.cancel()

    sink.on_save = cancel_when_completing
    with pytest.raises(Cancelled):
        first.run()
    cp = sink.latest
    assert isinstance(cp, UploadCheckpoint) and len(cp.parts) == cp.part_count
    from dataclasses import replace

    v1_like = replace(cp, pre_upload=None, session_started_at=None)
    emu.expire_sessions(dest)
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(v1_like)
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result.restarted_reason is not None and "predates" in result.restarted_reason


# ---------------------------------------------------------------- item 3: source torn in place


def test_single_shot_source_rewritten_during_the_put_is_withdrawn(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emu = files_api_emulator
    dest = f"{VOL}/torn-single.bin"
    src = make_file(tmp_path / "src", 3 * MiB, seed=103)
    rule = emu.add_fault(route="files.put", delay_s=1.5)  # the PUT is held while the file is rewritten
    writer = _when_fired(emu, rule.id, lambda: make_file(src, 3 * MiB, seed=104))
    opts = UploadOptions(retry=FAST_RETRY)  # 3 MiB: one request
    with caplog.at_level(logging.ERROR), pytest.raises(SourceChangedError):
        Uploader(client.upload_target(dest), src, opts).run()
    writer.join()
    assert not emu.local_path(dest).exists(), "a file read from a changing source was left in place"
    assert emu.requests("files.delete")
    assert any("deleted the file this upload had just written" in r.getMessage() for r in caplog.records)


def test_resumable_source_rewritten_before_the_final_chunk_is_never_committed(
    gcp: FilesApiEmulator, tmp_path: Path
) -> None:
    client = FilesApiClient(workspace(gcp), retry=FAST_RETRY)
    dest = f"{VOL}/torn-resumable.bin"
    src = make_file(tmp_path / "src", 11 * MiB, seed=105)  # three 5 MiB chunks
    rule = gcp.add_fault(route="presigned.resumable", nth=2, delay_s=1.5)
    writer = _when_fired(gcp, rule.id, lambda: make_file(src, 11 * MiB, seed=106))
    sink = MemorySink()
    with pytest.raises(SourceChangedError):
        Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink).run()
    writer.join()
    assert not gcp.local_path(dest).exists()
    assert gcp.sessions() == []  # aborted: nothing half-made is left either
    assert sink.latest is None


# ---------------------------------------------------------------- item 4: overwrite=False, lost answer


def test_overwrite_off_recognises_its_own_write_after_a_lost_answer(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    dest = f"{VOL}/mine.bin"
    src = make_file(tmp_path / "src", 2 * MiB, seed=107)
    emu.add_fault(route="files.put", cut_after_bytes=0, phase="after")  # stored, answer lost
    result = Uploader(client.upload_target(dest), src, UploadOptions(overwrite=False, retry=FAST_RETRY)).run()
    assert result.mode == "single"
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert [r.status for r in emu.requests("files.put")][-1] == 409  # the retry found our own file


# ---------------------------------------------------------------- item 5: one classification


UPLOAD_ROUTES = ["files.initiate_upload", "fs.create_upload_part_urls", "files.complete_upload", "files.head"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("route", UPLOAD_ROUTES)
def test_one_5xx_on_an_upload_control_route_is_retried(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, route: str, status: int
) -> None:
    emu = files_api_emulator
    dest = f"{VOL}/blip.bin"
    src = make_file(tmp_path / "src", 6 * MiB, seed=108)
    emu.add_fault(route=route, status=status)
    sink = MemorySink()
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert result.retries == 1 and result.restarted_reason is None
    statuses = [r.status for r in emu.requests(route)]
    assert statuses[0] == status and statuses[1] in (200, 404)  # HEAD of a new file: 404 is the answer


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_one_5xx_on_abort_is_retried(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, status: int
) -> None:
    """Aborting the stale session of a restarted upload: a blip must not leak the session."""
    emu = files_api_emulator
    dest = f"{VOL}/abort.bin"
    src = make_file(tmp_path / "src", 11 * MiB, seed=109)
    sink = MemorySink()
    first = Uploader(client.upload_target(dest), src, up_opts(parallelism=1), sink=sink)

    def cancel_after_one(cp: UploadCheckpoint) -> None:
        if cp.parts:
            first.cancel()

    sink.on_save = cancel_after_one
    with pytest.raises(Cancelled):
        first.run()
    make_file(src, 11 * MiB, seed=110)  # changed between tries: the old session must go
    emu.add_fault(route="files.abort_upload", status=status)
    sink.on_save = None
    result = Uploader(client.upload_target(dest), src, up_opts(), sink=sink).run(sink.latest)
    assert result.restarted_reason is not None
    assert [r.status for r in emu.requests("files.abort_upload")] == [status, 200]
    assert emu.sessions() == []
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_one_5xx_on_create_download_url_is_retried_not_a_silent_fallback(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, status: int
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/down-blip.bin"
    emu.seed(files=[{"path": path, "size": 3 * MiB, "seed": 111}])
    emu.add_fault(route="fs.create_download_url", status=status)
    out = tmp_path / "out.bin"
    Downloader(client.download_source(path), out, down_opts()).run()
    assert sha256_file(out) == sha256_file(emu.local_path(path))
    assert [r.status for r in emu.requests("fs.create_download_url")] == [status, 200]
    assert emu.requests("presigned.download") and not emu.requests("files.get")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_one_5xx_on_metadata_and_directory_routes_is_retried(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, status: int
) -> None:
    emu = files_api_emulator
    emu.seed(files=[{"path": f"{VOL}/d/f.bin", "size": 10}])
    for route in ("directories.put", "directories.head", "directories.get", "files.head"):
        emu.add_fault(route=route, status=status)
    client.create_directory(f"{VOL}/d/sub")
    assert client.directory_exists(f"{VOL}/d/sub")
    assert sorted(e.name for e in client.list_directory(f"{VOL}/d")) == ["f.bin", "sub"]
    meta = client.stat(f"{VOL}/d/f.bin")
    assert meta is not None and meta.size == 10
    emu.add_fault(route="directories.delete", status=status)
    emu.add_fault(route="files.delete", status=status)
    client.delete_file(f"{VOL}/d/f.bin")
    client.delete_directory(f"{VOL}/d/sub")
    assert emu.stats()["requests_by_route"]["directories.delete"] == 2


def test_a_lost_delete_answer_is_not_a_not_found_error(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator
) -> None:
    emu = files_api_emulator
    emu.seed(files=[{"path": f"{VOL}/gone.bin", "size": 10}])
    emu.add_fault(route="files.delete", status=502, phase="after")  # deleted, then a 502
    client.delete_file(f"{VOL}/gone.bin")
    assert client.stat(f"{VOL}/gone.bin") is None


def test_a_persistent_502_on_complete_ends_the_try_as_transient_and_the_next_try_resumes(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    dest = f"{VOL}/persistent.bin"
    src = make_file(tmp_path / "src", 16 * MiB, seed=112)
    emu.add_fault(route="files.complete_upload", status=502, times=None)
    sink = MemorySink()
    opts = up_opts(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    with pytest.raises(RetryBudgetExceeded):
        Uploader(client.upload_target(dest), src, opts, sink=sink).run()
    assert len(emu.requests("files.complete_upload")) == 3  # one request per attempt: no SDK retries
    assert len(emu.sessions()) == 1 and emu.requests("files.abort_upload") == []
    cp = sink.latest
    assert isinstance(cp, UploadCheckpoint) and cp.phase == "completing" and sink.cleared == 0
    sent = dict(emu.part_bytes(dest))
    assert sum(sent.values()) == 16 * MiB
    emu.clear_faults()
    result = Uploader(client.upload_target(dest), src, opts, sink=sink).run(cp)
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert emu.part_bytes(dest) == sent, "the second try sent parts again"
    assert result.parts_resumed == cp.part_count and result.bytes_sent == 0


def test_a_persistent_503_is_one_request_per_attempt_not_minutes_of_sdk_retries(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """The SDK retries 503 itself (Retry-After defaults to 1 s) for retry_timeout_seconds per call."""
    emu = files_api_emulator
    src = make_file(tmp_path / "src", 6 * MiB, seed=113)
    emu.add_fault(route="files.initiate_upload", status=503, times=None)
    opts = up_opts(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02))
    with pytest.raises(RetryBudgetExceeded):
        Uploader(client.upload_target(f"{VOL}/throttled.bin"), src, opts).run()
    assert len(emu.requests("files.initiate_upload")) == 2


def test_a_cut_control_answer_is_retried(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    dest = f"{VOL}/cut.bin"
    src = make_file(tmp_path / "src", 6 * MiB, seed=114)
    emu.add_fault(route="fs.create_upload_part_urls", cut_after_bytes=0, phase="after")
    Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)


# ---------------------------------------------------------------- item 7a and retry lines


def test_resumable_resend_waits_for_retry_after_and_names_the_chunk(
    gcp: FilesApiEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = FilesApiClient(workspace(gcp), retry=FAST_RETRY)
    dest = f"{VOL}/throttled-chunk.bin"
    src = make_file(tmp_path / "src", 11 * MiB, seed=115)
    gcp.add_fault(route="presigned.resumable", nth=2, status=503, retry_after_s=1)
    with caplog.at_level(logging.INFO, logger="airflow_databricks_transfer"):
        result = Uploader(client.upload_target(dest), src, up_opts(parallelism=1)).run()
    assert sha256_file(gcp.local_path(dest)) == sha256_file(src)
    assert result.retries == 1
    lines = [r.getMessage() for r in caplog.records if "retry 1 in" in r.getMessage()]
    assert len(lines) == 1 and "chunk 2: retry 1 in 1.0 s after" in lines[0]
    reqs = gcp.requests("presigned.resumable")
    failed = next(i for i, r in enumerate(reqs) if r.status == 503)
    after = reqs[failed + 1]
    # the server asked for 1 s (whole seconds on the wire) before anything else was sent
    assert after.time - after.duration_s - reqs[failed].time >= 0.95


def test_part_retry_lines_name_the_part(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dest = f"{VOL}/named.bin"
    src = make_file(tmp_path / "src", 16 * MiB, seed=116)
    files_api_emulator.add_fault(route="presigned.part", part_number=3, status=503, retry_after_s=1)
    with caplog.at_level(logging.INFO, logger="airflow_databricks_transfer"):
        Uploader(client.upload_target(dest), src, up_opts()).run()
    lines = [r.getMessage() for r in caplog.records if "retry 1 in" in r.getMessage()]
    assert len(lines) == 1 and f"{dest}: part 3: retry 1 in 1.0 s after" in lines[0]


# ---------------------------------------------------------------- item 11a


def test_cancel_while_a_run_starts_is_not_lost(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cancel() lands exactly while run() makes the event for its attempt (the old code replaced it)."""
    src = make_file(tmp_path / "src", 11 * MiB, seed=117)
    uploader = Uploader(client.upload_target(f"{VOL}/cancel.bin"), src, up_opts())
    real = threading.Event
    landed = threading.Event()

    class Threading:
        def __getattr__(self, name: str) -> Any:
            return getattr(threading, name)

        def Event(self) -> threading.Event:  # stands in for threading.Event
            if not landed.is_set():
                landed.set()
                uploader.cancel()
            return real()

    monkeypatch.setattr(upload_mod, "threading", Threading())
    with pytest.raises(Cancelled):
        uploader.run()
    assert landed.is_set()
    assert files_api_emulator.requests("presigned.part") == []


def test_zero_retries_means_zero(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src", MiB, seed=118)
    files_api_emulator.add_fault(route="files.put", status=503)
    opts = UploadOptions(max_total_retries=0, retry=FAST_RETRY)
    with pytest.raises(RetryBudgetExceeded):
        Uploader(client.upload_target(f"{VOL}/no-retries.bin"), src, opts).run()
    assert len(files_api_emulator.requests("files.put")) == 1


def test_resumable_success_leaves_no_checkpoint_behind(
    gcp: FilesApiEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saver's last write used to land after sink.clear(): a finished upload left a checkpoint."""
    client = FilesApiClient(workspace(gcp), retry=FAST_RETRY)
    flushing = threading.Event()

    class Saver(CoalescingSaver[UploadCheckpoint]):
        def flush(self, state: UploadCheckpoint | None = None, changed: int | None = None) -> None:
            flushing.set()
            super().flush(state, changed)

    monkeypatch.setattr(upload_mod, "CoalescingSaver", Saver)

    class SlowSink(MemorySink):
        """The first progress write is slow: it finishes only once the uploader clears or flushes."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.after_clear: list[int] = []
            self.was_cleared = False

        def save(self, checkpoint: Any, changed: frozenset[int]) -> None:
            if checkpoint.confirmed_bytes and not self.release.is_set():
                while not (self.release.is_set() or flushing.is_set()):
                    threading.Event().wait(0.005)
            if self.was_cleared:
                self.after_clear.append(checkpoint.confirmed_bytes)
            super().save(checkpoint, changed)

        def clear(self) -> None:
            self.was_cleared = True
            super().clear()
            self.release.set()

    sink = SlowSink()
    src = make_file(tmp_path / "src", 11 * MiB, seed=119)
    Uploader(client.upload_target(f"{VOL}/clean.bin"), src, up_opts(parallelism=1), sink=sink).run()
    assert sha256_file(gcp.local_path(f"{VOL}/clean.bin")) == sha256_file(src)
    assert sink.after_clear == [] and sink.latest is None


def test_a_fatal_part_error_still_aborts_the_session(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """The failing worker sets the run's stop event; aborting must not be cancelled by it."""
    src = make_file(tmp_path / "src", 16 * MiB, seed=120)
    files_api_emulator.add_fault(route="presigned.part", part_number=2, status=400, error_code="InvalidPart")
    sink = MemorySink()
    with pytest.raises(InvalidRequestError):
        Uploader(client.upload_target(f"{VOL}/refused.bin"), src, up_opts(), sink=sink).run()
    assert files_api_emulator.sessions() == []
    assert [r.status for r in files_api_emulator.requests("files.abort_upload")] == [200]
    assert sink.latest is None


def test_workers_with_valid_urls_keep_sending_while_one_refresh_is_slow(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """Refreshing one part's expired URL takes a while; parts whose URLs are valid go out meanwhile.

    The bandwidth limit (10 MiB/s, paced per piece) spaces the parts out, so some are due to start
    while the refresh is held for 1.5 s; the old lock made every worker wait for it before starting one.
    """
    emu = files_api_emulator
    dest = f"{VOL}/refresh.bin"
    src = make_file(tmp_path / "src", 30 * MiB, seed=121)
    emu.add_fault(route="presigned.part", part_number=1, expire=True)
    emu.add_fault(route="fs.create_upload_part_urls", nth=2, delay_s=1.5)
    opts = up_opts(parallelism=3, url_batch=16, bandwidth_limit_bytes_per_s=10 * MiB)
    Uploader(client.upload_target(dest), src, opts).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    slow = emu.requests("fs.create_upload_part_urls")[1]
    slow_start, slow_end = slow.time - slow.duration_s, slow.time
    during = [
        r.part_number for r in emu.requests("presigned.part") if slow_start < r.time - r.duration_s < slow_end
    ]
    assert during, "no part started while one worker's URL refresh was held: every worker waited for it"


def test_a_part_retry_under_a_bandwidth_limit_comes_when_announced(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a bandwidth limit the announced retry delay must be the one that really follows.

    The limit is paced per piece inside the send (no burst of a whole part), so the re-send of part 2
    starts after the announced backoff, not after a hidden wait for a part's worth of tokens (the old
    code announced "retry 1 in 0.4 s" and came back 16 s later). The slack is generous: it only has to
    tell a backoff from a part-sized token wait (about 2.5 s here).
    """
    emu = files_api_emulator
    dest = f"{VOL}/paced.bin"
    src = make_file(tmp_path / "src", 10 * MiB, seed=122)
    emu.add_fault(route="presigned.part", part_number=2, status=500)
    opts = up_opts(parallelism=1, part_size_bytes=5 * MiB, bandwidth_limit_bytes_per_s=2 * MiB)
    with caplog.at_level(logging.INFO, logger="airflow_databricks_transfer"):
        Uploader(client.upload_target(dest), src, opts).run()
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    (record,) = [r for r in caplog.records if "part 2: retry 1 in" in r.getMessage()]
    announced = float(record.getMessage().split("retry 1 in ")[1].split(" s")[0])
    assert announced <= FAST_RETRY.max_delay_s
    resend = [r for r in emu.requests("presigned.part") if r.part_number == 2 and r.status in (200, 201)]
    (ok,) = resend
    started = ok.time - ok.duration_s
    assert started - record.created < announced + 1.5


# ------------------------------------------------ issue 8 item 6: the workspace's request limits


def test_a_parallel_upload_rides_out_the_workspace_request_limit(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """The workspace's per-second limit is used up after its first API call and stays so (a frozen
    window) until far more 429s than an attempt budget allows were answered on the upload's control
    calls (part URLs, complete): the upload waits them out, Retry-After-paced, and completes. (The client
    before issue 8 counted each 429 as a failed attempt and gave up with RetryBudgetExceeded.)"""
    emu = files_api_emulator
    src = make_file(tmp_path / "src.bin", 16 * MiB + 3, seed=61)
    dest = f"{VOL}/limited/src.bin"
    emu.update_settings(rate_limit_per_s=1, rate_limit_retry_after_s=0)
    enough = 3 * FAST_RETRY.max_attempts + 1
    result = through_frozen_window(
        emu,
        lambda: Uploader(client.upload_target(dest), src, up_opts(), sink=MemorySink()).run(),
        enough=enough,
    )
    assert result.mode == "multipart"
    assert sha256_file(emu.local_path(dest)) == sha256_file(src)
    assert throttled(emu) >= enough
    assert {r.route for r in emu.requests() if r.status == 429} <= {
        "files.initiate_upload",
        "fs.create_upload_part_urls",
        "files.complete_upload",
        "files.head",
    }


# ---------------------------------------------------------------- issue #8: strict data plane


@pytest.mark.parametrize("size", [2 * MiB, 40 * MiB], ids=["read-whole", "refused-mid-body"])
def test_a_single_shot_over_the_servers_cap_fails_at_once_with_a_clear_error(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, size: int
) -> None:
    """The server's 413 is final: one PUT, no retries, and the message says what the limit is.

    With a large body the server answers before reading it and closes the connection: the client must
    still read that answer, not take the closed connection for a network blip to retry.
    """
    files_api_emulator.update_settings(single_shot_max_bytes=1 * MiB)
    src = make_file(tmp_path / "src", size, seed=50)
    dest = f"{VOL}/too-big.bin"
    opts = up_opts(multipart_threshold_bytes=1 << 40)  # our limits allow it: only the server refuses
    with pytest.raises(InvalidRequestError, match=r"HTTP 413.*limited to 1048576 bytes"):
        Uploader(client.upload_target(dest), src, opts).run()
    assert [r.status for r in files_api_emulator.requests("files.put")] == [413]
    assert not files_api_emulator.local_path(dest).exists()


@pytest.mark.parametrize("cloud", ["AWS", "GCP"])
def test_part_puts_send_the_signed_headers_exactly_as_handed_out(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, cloud: str
) -> None:
    """S3/GCS part URLs sign the headers returned with them. Ours must replace its own default
    Content-Type whatever the case of the server's header name, and send every other one."""
    files_api_emulator.update_settings(
        cloud=cloud,
        presigned_part_headers=[
            ("content-type", "binary/octet-stream"),
            ("x-amz-server-side-encryption", "AES256"),
        ],
    )
    src = make_file(tmp_path / "src", 11 * MiB, seed=51)
    dest = f"{VOL}/signed-headers.bin"
    Uploader(client.upload_target(dest), src, up_opts()).run()
    assert sha256_file(files_api_emulator.local_path(dest)) == sha256_file(src)
    assert {r.status for r in files_api_emulator.requests("presigned.part")} == {200}
