"""Progress lines against the emulator: chunks named and counted, one speed, the bandwidth limit held."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions
from airflow_databricks_transfer.engine.progress import ProgressEvent, log_progress
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import MiB, make_file

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"


@pytest.fixture
def client(files_api_emulator: FilesApiEmulator) -> Iterator[FilesApiClient]:
    emu = files_api_emulator
    c = FilesApiClient(WorkspaceClient(config=Config(host=emu.url, token=emu.token)))
    yield c
    c.http.close()


def upload(client: FilesApiClient, src: Path, dest: str, **kw: object) -> tuple[object, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    opts = UploadOptions(
        **{"part_size_bytes": 5 * MiB, "parallelism": 3, "multipart_threshold_bytes": 1, **kw}  # type: ignore[arg-type]
    )
    result = Uploader(client.upload_target(dest), src, opts, subscribers=[events.append]).run()
    return result, events


def test_download_lines_count_chunks(client: FilesApiClient, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src", 8 * MiB, seed=1)
    upload(client, src, f"{VOL}/chunks.bin")
    events: list[ProgressEvent] = []
    opts = DownloadOptions(chunk_size_bytes=2 * MiB, parallelism=1, progress_interval_s=0)
    result = Downloader(
        client.download_source(f"{VOL}/chunks.bin"), tmp_path / "out", opts, subscribers=[events.append]
    ).run()
    assert result.chunks == 4
    lines = [e.describe() for e in events if not e.final]
    assert lines and all("chunk " in line and "part" not in line for line in lines)
    for e in events:  # a chunk counts once it is finished, never before
        assert e.parts_done <= e.bytes_done // (2 * MiB)
    assert events[-1].final and events[-1].parts_done == 4
    assert "chunk 4/4" in events[-2].describe()


def test_upload_lines_count_parts(client: FilesApiClient, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src", 12 * MiB, seed=2)
    _, events = upload(client, src, f"{VOL}/parts.bin", progress_interval_s=0)
    assert any("part 3/3" in e.describe() for e in events if not e.final)


def test_the_final_line_and_the_result_report_one_speed(
    client: FilesApiClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = make_file(tmp_path / "src", 12 * MiB, seed=3)
    logger = logging.getLogger("adt.speed")
    events: list[ProgressEvent] = []
    opts = UploadOptions(part_size_bytes=5 * MiB, multipart_threshold_bytes=1)
    with caplog.at_level(logging.INFO, logger="adt.speed"):
        up = Uploader(
            client.upload_target(f"{VOL}/speed.bin"),
            src,
            opts,
            subscribers=[events.append, log_progress(logger)],
        ).run()
    final = events[-1]
    assert final.final
    assert final.rate_bps / MiB == pytest.approx(up.mib_per_s, rel=1e-9)
    assert f"({up.mib_per_s:.1f} MiB/s this try" in caplog.text  # the hook's line, the operator's number

    down_events: list[ProgressEvent] = []
    down = Downloader(
        client.download_source(f"{VOL}/speed.bin"),
        tmp_path / "out",
        DownloadOptions(chunk_size_bytes=4 * MiB),
        subscribers=[down_events.append],
    ).run()
    assert down_events[-1].final
    assert down_events[-1].rate_bps / MiB == pytest.approx(down.mib_per_s, rel=1e-9)


LIMIT = 4 * MiB


def test_the_upload_limit_holds_from_the_first_byte(
    client: FilesApiClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """12 MiB at 4 MiB/s: before, the first part went out at full speed (6+ MiB/s measured)."""
    src = make_file(tmp_path / "src", 12 * MiB, seed=4)
    logger = logging.getLogger("adt.limit")
    events: list[ProgressEvent] = []
    opts = UploadOptions(
        part_size_bytes=5 * MiB, parallelism=3, multipart_threshold_bytes=1, bandwidth_limit_bytes_per_s=LIMIT
    )
    with caplog.at_level(logging.INFO, logger="adt.limit"):
        result = Uploader(
            client.upload_target(f"{VOL}/limited.bin"),
            src,
            opts,
            subscribers=[events.append, log_progress(logger)],
        ).run()
    assert result.bytes_sent == 12 * MiB
    assert result.bytes_sent / result.seconds <= LIMIT * 1.1
    assert events[-1].throttled_s > 0 and "by the bandwidth limit" in caplog.text  # the wait is not hidden


def test_the_download_limit_holds_from_the_first_byte(client: FilesApiClient, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src", 12 * MiB, seed=5)
    upload(client, src, f"{VOL}/limited-down.bin")
    opts = DownloadOptions(chunk_size_bytes=4 * MiB, parallelism=3, bandwidth_limit_bytes_per_s=LIMIT)
    result = Downloader(client.download_source(f"{VOL}/limited-down.bin"), tmp_path / "out", opts).run()
    assert result.bytes_received == 12 * MiB
    assert result.bytes_received / result.seconds <= LIMIT * 1.1
