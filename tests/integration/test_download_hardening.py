"""Download hardening (issue #7 items 2, 7b, 8, 9, 10 and the retry lines) over real sockets.

Each test drives the engine and the Files API client against the emulator; byte counts come from the
emulator's request log, file contents from its disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions, temp_path_for
from airflow_databricks_transfer.engine.errors import (
    ChecksumMismatchError,
    InvalidRequestError,
    RetryBudgetExceeded,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import (
    MiB,
    SteppedSource,
    sha256_file,
    throttled,
    through_frozen_window,
)

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"
FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=2)
CHUNK = 2 * MiB


class MemorySink:
    def __init__(self, on_save: Callable[[DownloadCheckpoint], None] | None = None) -> None:
        self.latest: DownloadCheckpoint | None = None
        self.cleared = 0
        self.on_save = on_save

    def save(self, checkpoint: DownloadCheckpoint, changed: frozenset[int]) -> None:
        self.latest = checkpoint
        if self.on_save is not None:
            self.on_save(checkpoint)

    def clear(self) -> None:
        self.latest = None
        self.cleared += 1


@pytest.fixture
def client(files_api_emulator: FilesApiEmulator) -> Iterator[FilesApiClient]:
    w = WorkspaceClient(
        config=Config(host=files_api_emulator.url, token=files_api_emulator.token, retry_timeout_seconds=5)
    )
    c = FilesApiClient(w)
    yield c
    c.http.close()


def opts(**kw: Any) -> DownloadOptions:
    return DownloadOptions(**{"chunk_size_bytes": CHUNK, "parallelism": 1, "retry": FAST_RETRY, **kw})


def served(emu: FilesApiEmulator) -> int:
    return sum(r.bytes_out for r in emu.requests("presigned.download"))


def rewrite_same_size_same_second(emu: FilesApiEmulator, path: str, seed: int) -> bytes:
    """Replace the remote object with other bytes of the same size and the same mtime (so the same
    Last-Modified second): only its ETag can tell the versions apart."""
    disk = emu.local_path(path)
    st = disk.stat()
    data = random.Random(seed).randbytes(st.st_size)
    tmp = disk.with_name(disk.name + ".next")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, disk)  # a new inode: the emulator's ETag changes, size and Last-Modified do not
    return data


def v1_dict(cp: DownloadCheckpoint) -> dict[str, Any]:
    """The checkpoint as a v1 writer (no durability, no boot id) stored it."""
    d = cp.to_dict()
    for key in ("boot_id", "durable", "data_pin"):
        d.pop(key, None)
    d["version"] = 1
    return d


# ---------------------------------------------------------------- item 2: durable before checkpointed


def _crashed_partial(
    emu: FilesApiEmulator, client: FilesApiClient, path: str, out: Path
) -> DownloadCheckpoint:
    """The state a host crash leaves: the checkpoint names chunks 0-2, the sparse temp file has its full
    length, and chunk 1's bytes never left the page cache (zeros)."""
    remote = client.download_source(path).stat()
    source_bytes = emu.local_path(path).read_bytes()
    temp = Path(temp_path_for(str(out)))
    with open(temp, "wb") as f:
        f.truncate(remote.size)
        f.write(source_bytes[: 3 * CHUNK])
        f.seek(CHUNK)
        f.write(b"\0" * CHUNK)
    return DownloadCheckpoint(
        path, remote, str(out), str(temp), 0, remote.size, CHUNK, done_chunks=frozenset({0, 1, 2})
    )


@pytest.mark.parametrize("written_by", ["v1-writer", "v2-without-durability-other-boot"])
def test_chunks_not_made_durable_are_not_trusted_after_a_host_restart(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path, written_by: str
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/crash.bin"
    emu.seed(files=[{"path": path, "size": 8 * MiB + 5, "seed": 40}])
    out = tmp_path / "out.bin"
    cp = _crashed_partial(emu, client, path, out)
    if written_by == "v1-writer":
        stored = DownloadCheckpoint.from_dict(v1_dict(cp))
    else:
        stored = DownloadCheckpoint.from_json(
            replace(cp, boot_id="00000000-0000-0000-0000-000000000000", durable=False).to_json()
        )
    result = Downloader(client.download_source(path), out, opts(), sink=MemorySink()).run(stored)
    assert sha256_file(out) == sha256_file(emu.local_path(path)) == result.sha256
    assert result.chunks_resumed == 0 and result.restarted_reason is not None
    assert "restarted" in result.restarted_reason
    assert served(emu) == 8 * MiB + 5  # every chunk fetched again


def test_durable_chunks_resume_after_a_restart_and_new_checkpoints_say_durable(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """A checkpoint written after the flush is trusted across boots (the flush is the guarantee)."""
    emu = files_api_emulator
    path = f"{VOL}/durable.bin"
    emu.seed(files=[{"path": path, "size": 8 * MiB + 5, "seed": 41}])
    out = tmp_path / "out.bin"
    cp = _crashed_partial(emu, client, path, out)
    with open(cp.temp_path, "r+b") as f:  # this time chunk 1 reached the disk
        f.seek(CHUNK)
        f.write(emu.local_path(path).read_bytes()[CHUNK : 2 * CHUNK])
    stored = replace(cp, boot_id="00000000-0000-0000-0000-000000000000", durable=True)
    sink = MemorySink()
    seen: list[DownloadCheckpoint] = []
    sink.on_save = seen.append
    result = Downloader(client.download_source(path), out, opts(), sink=sink).run(stored)
    assert sha256_file(out) == sha256_file(emu.local_path(path))
    assert result.chunks_resumed == 3 and served(emu) == 8 * MiB + 5 - 3 * CHUNK
    assert seen and all(c.durable and c.boot_id != stored.boot_id for c in seen)


# ---------------------------------------------------------------- item 7b: ETag pinning


def test_same_size_same_second_rewrite_mid_download_is_caught_by_the_etag(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    emu.update_settings(files_api_etag=False)  # the workspace's HEAD shows no ETag, as on Databricks
    path = f"{VOL}/etag.bin"
    emu.seed(files=[{"path": path, "size": 10 * MiB, "seed": 42}])
    assert client.stat(path) is not None and client.stat(path).etag is None  # type: ignore[union-attr]
    replaced: list[bytes] = []
    source = SteppedSource(
        client, path, {2: lambda: replaced.append(rewrite_same_size_same_second(emu, path, seed=43))}
    )
    out = tmp_path / "out.bin"
    result = Downloader(source, out, opts(), sink=MemorySink()).run()
    assert replaced and out.read_bytes() == replaced[0]  # all of the new version, nothing spliced
    assert result.restarted_reason is not None and "changed" in result.restarted_reason
    assert any(r.status == 412 for r in emu.requests("presigned.download"))  # If-Match was sent


def test_a_resumed_try_keeps_the_etag_pin_of_the_first(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    emu.update_settings(files_api_etag=False)
    path = f"{VOL}/etag-resume.bin"
    emu.seed(files=[{"path": path, "size": 10 * MiB, "seed": 44}])
    out = tmp_path / "out.bin"
    sink = MemorySink()
    stepped = SteppedSource(client, path, {})
    first = Downloader(stepped, out, opts(), sink=sink)
    stepped.before[2] = first.cancel  # stop while the second chunk is being fetched
    with pytest.raises(Cancelled):
        first.run()
    kept = sink.latest
    assert kept is not None and kept.done_chunks == {0}
    new = rewrite_same_size_same_second(emu, path, seed=45)
    again = DownloadCheckpoint.from_json(kept.to_json())  # as a new process would load it
    result = Downloader(client.download_source(path), out, opts(), sink=sink).run(again)
    assert out.read_bytes() == new  # not the first try's chunks spliced with the new version
    assert result.chunks_resumed == 0 and result.restarted_reason is not None
    assert kept.data_pin is not None and kept.data_pin.startswith("presigned ")


# ---------------------------------------------------------------- item 8: expected digest


def test_expected_sha256_mismatch_fails_once_with_both_digests(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/digest.bin"
    emu.seed(files=[{"path": path, "size": 6 * MiB + 1, "seed": 46}])
    actual = sha256_file(emu.local_path(path))
    wrong = hashlib.sha256(b"something else").hexdigest()
    out = tmp_path / "out.bin"
    sink = MemorySink()
    with pytest.raises(ChecksumMismatchError) as info:
        Downloader(client.download_source(path), out, opts(expected_sha256=wrong), sink=sink).run()
    assert actual in str(info.value) and wrong in str(info.value)
    assert served(emu) == 6 * MiB + 1  # downloaded exactly once
    assert not out.exists() and not Path(temp_path_for(str(out))).exists()
    assert sink.latest is None and sink.cleared >= 1


# ---------------------------------------------------------------- item 9: derive, never trust


def test_a_crafted_checkpoint_cannot_touch_files_elsewhere(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/crafted.bin"
    size = 3 * MiB
    emu.seed(files=[{"path": path, "size": size, "seed": 47}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.bin"  # right size, so a trusting resume would write into it
    victim.write_bytes(b"V" * size)
    victim2 = elsewhere / "victim2.txt"
    victim2.write_bytes(b"keep me")
    out = tmp_path / "out.bin"
    remote = client.download_source(path).stat()
    honest = DownloadCheckpoint(path, remote, str(out), temp_path_for(str(out)), 0, size, CHUNK)
    crafted = [
        replace(honest, temp_path=str(victim), done_chunks=frozenset({0})),
        replace(honest, destination=str(elsewhere / "other.bin"), temp_path=str(victim2)),
    ]
    for cp in crafted:
        sink = MemorySink()
        result = Downloader(client.download_source(path), out, opts(), sink=sink).run(
            DownloadCheckpoint.from_json(cp.to_json())
        )
        assert result.chunks_resumed == 0 and result.restarted_reason is not None
        assert sha256_file(out) == sha256_file(emu.local_path(path))
        assert victim.read_bytes() == b"V" * size and victim2.read_bytes() == b"keep me"
        out.unlink()


# ---------------------------------------------------------------- item 10: cleanup on fatal errors


def test_a_fatal_error_removes_the_partial_file_and_the_checkpoint(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/fatal.bin"
    emu.seed(files=[{"path": path, "size": 8 * MiB, "seed": 48}])
    emu.add_fault(route="presigned.download", nth=3, status=400, message="bad request")
    out = tmp_path / "out.bin"
    sink = MemorySink()
    with pytest.raises(InvalidRequestError):
        Downloader(client.download_source(path), out, opts(), sink=sink).run()
    assert not Path(temp_path_for(str(out))).exists() and not out.exists()
    assert sink.latest is None and sink.cleared >= 1


def test_transient_errors_past_the_budget_keep_both_for_the_next_try(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/budget.bin"
    emu.seed(files=[{"path": path, "size": 8 * MiB, "seed": 49}])
    emu.add_fault(route="presigned.download", nth=3, times=None, status=503)
    out = tmp_path / "out.bin"
    sink = MemorySink()
    with pytest.raises(RetryBudgetExceeded):
        Downloader(client.download_source(path), out, opts(max_total_retries=1), sink=sink).run()
    kept = sink.latest
    assert kept is not None and kept.done_chunks == {0, 1}
    assert Path(temp_path_for(str(out))).exists()
    emu.clear_faults()
    result = Downloader(client.download_source(path), out, opts(), sink=sink).run(kept)
    assert result.chunks_resumed == 2 and sha256_file(out) == sha256_file(emu.local_path(path))


# ---------------------------------------------------------------- retry lines


def test_retry_lines_name_the_chunk(
    client: FilesApiClient,
    files_api_emulator: FilesApiEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/retry-line.bin"
    emu.seed(files=[{"path": path, "size": 5 * MiB, "seed": 50}])
    emu.add_fault(route="presigned.download", nth=2, status=503)
    with caplog.at_level(logging.INFO, logger="airflow_databricks_transfer.engine.download"):
        Downloader(client.download_source(path), tmp_path / "o.bin", opts()).run()
    lines = [r.getMessage() for r in caplog.records if "retry 1 in" in r.getMessage()]
    assert len(lines) == 1 and "chunk 2/3: retry 1 in" in lines[0], lines


# ------------------------------------------------ issue 8 item 6: the workspace's request limits


def test_a_parallel_direct_download_rides_out_the_workspace_request_limit(
    client: FilesApiClient, files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """Presigned URLs off, so every ranged GET is a workspace API call. The workspace's per-second limit
    is used up after three requests and stays so (a frozen window) until far more 429s than any attempt
    budget allows were answered: a 429 is pacing by a limit shared with other clients, not a failure, so
    the parallel download waits and finishes. (The client before issue 8 counted each 429 as a failed
    attempt and gave up with RetryBudgetExceeded.)"""
    emu = files_api_emulator
    path = f"{VOL}/limited.bin"
    emu.seed(files=[{"path": path, "size": 8 * MiB, "seed": 51}])
    emu.update_settings(presigned_enabled=False, rate_limit_per_s=3, rate_limit_retry_after_s=0)
    out = tmp_path / "out.bin"
    enough = 4 * FAST_RETRY.max_attempts + 1  # more than every worker's attempts
    through_frozen_window(
        emu,
        lambda: Downloader(client.download_source(path), out, opts(parallelism=4)).run(),
        enough=enough,
        route="files.get",
    )
    assert sha256_file(out) == sha256_file(emu.local_path(path))
    assert throttled(emu, "files.get") >= enough  # the request log shows the download was throttled
