"""The official databricks-sdk, both protocol generations, against the Files API emulator over HTTP.

This is the emulator's fidelity proof: if the real client works unchanged, so will code built on the
same wire protocol. Every transfer is checked byte for byte (SHA-256) and by what reached the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.conftest import (
    MiB,
    make_file,
    run_sdk,
    sha256_file,
    throttled,
    through_frozen_window,
)
from tests.integration.protocol_api import serve_storage_proxy

pytestmark = pytest.mark.integration

VOL = "/Volumes/main/default/landing"
# Lower the SDK's 50 MiB multipart threshold so small files exercise the multipart flow.
SMALL_MULTIPART = {"files_ext_multipart_upload_min_stream_size": 1 * MiB}


CLOUDS = ("AWS", "AZURE", "GCP")


def _routes(emu: FilesApiEmulator) -> list[str]:
    return [r.route for r in emu.requests()]


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest, files_api_emulator: FilesApiEmulator) -> str:
    """Run a data-plane test once per cloud: each signs, answers and fails presigned requests its own way."""
    files_api_emulator.update_settings(cloud=request.param)
    return str(request.param)


@pytest.mark.parametrize(
    ("size", "cloud"),
    [(0, "AWS"), (1, "AWS"), *((5 * MiB, c) for c in CLOUDS)],
    ids=["0B-AWS", "1B-AWS", *(f"one-part-{c}" for c in CLOUDS)],
    indirect=["cloud"],
)
def test_roundtrip_small_sizes(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, size: int, cloud: str
) -> None:
    emu = files_api_emulator
    if size == 0 and sdk_version == "0.156.0":
        # 0.156 sends an empty file as a chunked PUT (no Content-Length), which the strict default
        # refuses (test_sdk_0_156_sends_an_empty_file_chunked); accept it here to test the rest.
        emu.update_settings(workspace_put_requires_length=False)
    src = make_file(tmp_path / "src.bin", size, seed=size)
    path = f"{VOL}/sizes/f-{size}.bin"
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [
            {"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB},
            {"op": "download", "path": path, "dst": str(tmp_path / "stream.bin"), "mode": "stream"},
            {"op": "download", "path": path, "dst": str(tmp_path / "to.bin"), "mode": "to"},
            {"op": "metadata", "path": path},
        ],
        config=SMALL_MULTIPART,
    )
    assert results[:3] == ["ok", "ok", "ok"]
    assert results[3]["content_length"] == size
    assert results[3]["content_type"] == "application/octet-stream"
    digest = sha256_file(src)
    assert sha256_file(emu.local_path(path)) == digest
    assert sha256_file(tmp_path / "stream.bin") == digest
    assert sha256_file(tmp_path / "to.bin") == digest
    routes = _routes(emu)
    if size >= MiB:  # multipart with exactly one part
        assert routes.count("presigned.part") == 1
        assert routes.count("files.complete_upload") == 1
        assert emu.part_bytes(path) == {1: size}
    else:  # below the threshold, and empty data, go single-shot
        assert routes.count("files.put") == 1
        assert "files.initiate_upload" not in routes


def test_sdk_0_156_sends_an_empty_file_chunked(files_api_emulator: FilesApiEmulator, tmp_path: Path) -> None:
    """Pins the finding behind ``workspace_put_requires_length``: whether the real workspace takes a
    chunked single-shot PUT is unverified, so 0.156's empty uploads fail under the strict default."""
    emu = files_api_emulator
    src = make_file(tmp_path / "empty.bin", 0)
    path = f"{VOL}/sizes/empty.bin"
    results = run_sdk("0.156.0", emu.url, emu.token, [{"op": "upload", "path": path, "src": str(src)}])
    assert results[0]["error"] == "InvalidParameterValue"
    assert [r.status for r in emu.requests("files.put")] == [411]
    assert not emu.local_path(path).exists()


@pytest.mark.slow
def test_large_parallel_roundtrip(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, cloud: str
) -> None:
    emu = files_api_emulator
    size = 300 * MiB + 12345
    src = make_file(tmp_path / "big.bin", size, seed=7)
    path = f"{VOL}/big/big.bin"
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [
            {"op": "upload", "path": path, "src": str(src), "parallel": True, "parallelism": 4},
            {"op": "download", "path": path, "dst": str(tmp_path / "par.bin"), "mode": "parallel"},
            {"op": "download", "path": path, "dst": str(tmp_path / "stream.bin"), "mode": "stream"},
        ],
    )
    assert results == ["ok", "ok", "ok"]
    digest = sha256_file(src)
    assert sha256_file(emu.local_path(path)) == digest
    assert sha256_file(tmp_path / "par.bin") == digest
    assert sha256_file(tmp_path / "stream.bin") == digest
    parts = emu.requests("presigned.part")
    assert len(parts) == 31  # smallest SDK part size (10 MiB) that keeps <= 100 parts
    assert sum(emu.part_bytes(path).values()) == size  # every byte sent exactly once
    # parts really overlapped in time: the server saw concurrent uploads
    spans = [(r.time - r.duration_s, r.time) for r in parts]
    overlap = max(sum(1 for s, e in spans if s < end and e > end) + 1 for _, end in spans)
    assert overlap >= 2
    ranged = [r for r in emu.requests("presigned.download") if r.status == 206]
    assert len(ranged) >= 2, "parallel download_to must use ranged GETs"


def test_download_resumes_after_cut_connection(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, cloud: str
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/resume/presigned.bin"
    emu.seed(files=[{"path": path, "size": 9 * MiB + 3, "seed": 1}])
    emu.add_fault(route="presigned.download", cut_after_bytes=5 * MiB // 2)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [{"op": "download", "path": path, "dst": str(tmp_path / "d.bin"), "mode": "stream"}],
    )
    assert results == ["ok"]
    assert sha256_file(tmp_path / "d.bin") == sha256_file(emu.local_path(path))
    gets = emu.requests("presigned.download")
    assert gets[0].dropped and gets[0].bytes_out == 5 * MiB // 2
    resumed = gets[1]
    assert resumed.status == 206 and resumed.range is not None
    start = int(resumed.range.split("=")[1].split("-")[0])
    assert 0 < start <= 5 * MiB // 2, "the resume must continue from where the body broke"


def test_direct_download_resumes_without_presigned_urls(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/resume/direct.bin"
    emu.seed(files=[{"path": path, "size": 6 * MiB, "seed": 2}])
    emu.update_settings(presigned_enabled=False)
    emu.add_fault(route="files.get", cut_after_bytes=3 * MiB // 2)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [{"op": "download", "path": path, "dst": str(tmp_path / "d.bin"), "mode": "stream"}],
    )
    assert results == ["ok"]
    assert sha256_file(tmp_path / "d.bin") == sha256_file(emu.local_path(path))
    gets = emu.requests("files.get")
    assert len(gets) >= 2 and gets[0].dropped
    assert gets[-1].range is not None and gets[-1].range.startswith("bytes=")


def test_listing_paginates(files_api_emulator: FilesApiEmulator, sdk_version: str) -> None:
    emu = files_api_emulator
    emu.update_settings(list_page_size_max=2)
    emu.seed(
        files=[{"path": f"{VOL}/list/f{i}.txt", "size": i, "seed": i} for i in range(5)]
        + [{"path": f"{VOL}/list/sub/x.txt", "size": 1}]
    )
    results = run_sdk(sdk_version, emu.url, emu.token, [{"op": "list", "path": f"{VOL}/list/"}])
    entries = results[0]
    assert [e["name"] for e in entries] == ["f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt", "sub"]
    # proto3 JSON omits a zero file_size; the SDK then reads None (so a client must treat it as 0)
    assert [e["file_size"] for e in entries[:5]] == [None, 1, 2, 3, 4]
    assert entries[5]["is_directory"] is True
    assert len(emu.requests("directories.get")) == 3


def test_metadata_delete_and_directories(files_api_emulator: FilesApiEmulator, sdk_version: str) -> None:
    emu = files_api_emulator
    path = f"{VOL}/meta/a.bin"
    emu.seed(files=[{"path": path, "size": 1234}])
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [
            {"op": "metadata", "path": path},
            {"op": "rmdir", "path": f"{VOL}/meta"},
            {"op": "delete", "path": path},
            {"op": "metadata", "path": path},
            {"op": "delete", "path": path},
            {"op": "mkdir", "path": f"{VOL}/made/deep/er/"},
            {"op": "dir_exists", "path": f"{VOL}/made/deep/er"},
            {"op": "rmdir", "path": f"{VOL}/made/deep/er/"},
            {"op": "dir_exists", "path": f"{VOL}/made/deep/er"},
        ],
    )
    assert results[0]["content_length"] == 1234
    assert results[1]["error"] == "BadRequest"  # directory not empty
    assert results[2] == "ok"
    assert results[3]["error"] == "NotFound"
    assert results[4]["error"] == "NotFound"
    assert results[5:8] == ["ok", "ok", "ok"]
    assert results[8]["error"] == "NotFound"


def test_overwrite_false_is_refused(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, cloud: str
) -> None:
    emu = files_api_emulator
    small, large = f"{VOL}/ow/small.txt", f"{VOL}/ow/large.bin"
    emu.seed(files=[{"path": small, "size": 3}, {"path": large, "size": 3}])
    src_small = make_file(tmp_path / "s", 10)
    src_large = make_file(tmp_path / "l", 10 * MiB)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [
            {"op": "upload", "path": small, "src": str(src_small), "overwrite": False},
            {
                "op": "upload",
                "path": large,
                "src": str(src_large),
                "overwrite": False,
                "part_size": 5 * MiB,
                "parallel": False,
            },
        ],
        config=SMALL_MULTIPART,
    )
    assert results[0]["error"] == "AlreadyExists"
    assert results[1]["error"] == "AlreadyExists"  # the server refuses at complete-upload (409)
    assert emu.local_path(large).stat().st_size == 3  # the existing file is untouched
    assert emu.sessions() == []  # and the client aborted its session
    complete = emu.requests("files.complete_upload")
    assert [r.status for r in complete] == [409]


def test_failed_part_aborts_the_session(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, cloud: str
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/abort/f.bin"
    src = make_file(tmp_path / "f", 25 * MiB)
    emu.add_fault(route="presigned.part", part_number=3, status=500, times=None)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [{"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB, "parallel": False}],
        config=SMALL_MULTIPART,
    )
    assert results[0]["error"] == "InternalError"
    routes = _routes(emu)
    if sdk_version == "0.156.0":  # presigned abort URL, then an unauthenticated DELETE
        assert "fs.create_abort_upload_url" in routes and "presigned.abort" in routes
    else:
        assert "files.abort_upload" in routes
    assert emu.sessions() == []
    assert not emu.local_path(path).exists()


def test_expired_part_url_is_refreshed(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path, cloud: str
) -> None:
    emu = files_api_emulator
    path = f"{VOL}/expiry/f.bin"
    src = make_file(tmp_path / "f", 20 * MiB, seed=3)
    emu.add_fault(route="presigned.part", part_number=2, expire=True)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [{"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB, "parallel": False}],
        config=SMALL_MULTIPART,
    )
    parts = emu.requests("presigned.part")
    if sdk_version == "0.156.0" and cloud == "GCP":
        # 0.156 knows the AWS and Azure "expired" bodies only, not GCS's ExpiredToken (0.162 does):
        # the expiry surfaces as a plain 403 (that SDK spoke the resumable protocol to GCP anyway)
        assert results[0]["error"] == "PermissionDenied"
        assert [r.status for r in parts if r.part_number == 2] == [403]
        return
    assert results == ["ok"]
    assert sha256_file(emu.local_path(path)) == sha256_file(src)
    assert next(r.status for r in parts if r.part_number == 2) == 403
    # each chunk stored once (an Azure Put Block answers 201)
    assert sum(r.bytes_in for r in parts if r.status in (200, 201)) == 20 * MiB
    # a fresh URL was asked for after the expiry (0.156 re-sends the chunk as the next part number,
    # 0.162 as the same one; both are valid S3 semantics)
    urls_after = [r for r in emu.requests("fs.create_upload_part_urls") if r.seq > parts[1].seq]
    assert urls_after


def test_throttling_with_retry_after_is_survived(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path
) -> None:
    # one cloud: the throttles are workspace JSON and a generic storage 503, the same on every cloud,
    # and each run waits out two Retry-After seconds
    emu = files_api_emulator
    path = f"{VOL}/throttle/f.bin"
    src = make_file(tmp_path / "f", 12 * MiB, seed=4)
    emu.add_fault(route="presigned.part", part_number=2, status=503, retry_after_s=1)
    emu.add_fault(route="fs.create_upload_part_urls", status=429, retry_after_s=1)
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [{"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB, "parallel": False}],
        config=SMALL_MULTIPART,
    )
    assert results == ["ok"]
    assert sha256_file(emu.local_path(path)) == sha256_file(src)
    assert next(r.status for r in emu.requests("fs.create_upload_part_urls")) == 429


def test_gcp_resumable_protocol(tmp_path: Path, sdk_version: str) -> None:
    with FilesApiEmulator(
        tmp_path / "root", volumes=["main.default.landing"], upload_protocol="resumable", cloud="GCP"
    ) as emu:
        path = f"{VOL}/gcp/f.bin"
        src = make_file(tmp_path / "f", 12 * MiB + 5, seed=5)
        results = run_sdk(
            sdk_version,
            emu.url,
            emu.token,
            [{"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB}],
            config=SMALL_MULTIPART,
        )
        assert results == ["ok"]
        assert sha256_file(emu.local_path(path)) == sha256_file(src)
        routes = _routes(emu)
        if sdk_version == "0.156.0":  # GCS-style chunks with Content-Range and 308s
            assert "fs.create_resumable_upload_url" in routes
            chunks = emu.requests("presigned.resumable")
            assert [r.status for r in chunks][-1] == 200
            assert all(r.status == 308 for r in chunks[:-1]) and len(chunks) >= 2
        else:  # 0.160+ no longer speak it and fall back to one single-shot PUT
            assert "presigned.resumable" not in routes
            assert routes.count("files.put") == 1


def test_storage_proxy_multipart_via_endpoint_discovery(
    files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    emu = files_api_emulator
    serve_storage_proxy(emu)
    path = f"{VOL}/proxy/f.bin"
    src = make_file(tmp_path / "f", 11 * MiB, seed=6)
    results = run_sdk(
        "0.162.0",
        emu.url,
        emu.token,
        [{"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB}],
        config={**SMALL_MULTIPART, "experimental_files_ext_enable_endpoints_api": True},
    )
    assert results == ["ok"]
    assert sha256_file(emu.local_path(path)) == sha256_file(src)
    assert len(emu.requests("files.proxy_multipart")) == 3
    assert "presigned.part" not in _routes(emu)


def test_unity_catalog_volume_lifecycle(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path
) -> None:
    emu = files_api_emulator
    src = make_file(tmp_path / "f", 100)
    path = "/Volumes/main/sdk_schema/vol/x.bin"
    results = run_sdk(
        sdk_version,
        emu.url,
        emu.token,
        [
            {"op": "upload", "path": path, "src": str(src)},
            {"op": "create_volume", "name": "main.sdk_schema.vol"},
            {"op": "upload", "path": path, "src": str(src)},
            {"op": "list", "path": "/Volumes/main/sdk_schema/vol"},
            {"op": "delete_volume", "name": "main.sdk_schema.vol"},
            {"op": "metadata", "path": path},
        ],
    )
    assert results[0]["error"] == "NotFound"  # no such volume yet
    assert results[1] == "main.sdk_schema.vol"
    assert results[2] == "ok"
    assert [e["name"] for e in results[3]] == ["x.bin"]
    assert results[4] == "ok"
    assert results[5]["error"] == "NotFound"


def test_wrong_token_is_unauthenticated(files_api_emulator: FilesApiEmulator, sdk_version: str) -> None:
    results = run_sdk(
        sdk_version, files_api_emulator.url, "not-a-token", [{"op": "metadata", "path": f"{VOL}/x"}]
    )
    assert results[0]["error"] == "Unauthenticated"


def test_the_workspace_request_limit_is_ridden_out(
    files_api_emulator: FilesApiEmulator, sdk_version: str, tmp_path: Path
) -> None:
    """The official client against the workspace's request limits (on by default): the per-second window
    is used up after one call and stays so until several 429s with Retry-After were answered; the SDK's
    own retries wait them out, and the upload, listing and download that follow all succeed."""
    emu = files_api_emulator
    path = f"{VOL}/limited/f.bin"
    src = make_file(tmp_path / "f", 6 * MiB, seed=8)
    emu.update_settings(rate_limit_per_s=1)
    ops: list[dict[str, Any]] = [
        {"op": "upload", "path": path, "src": str(src), "part_size": 5 * MiB, "parallel": False},
        {"op": "list", "path": f"{VOL}/limited"},
        {"op": "download", "path": path, "dst": str(tmp_path / "d.bin"), "mode": "parallel"},
    ]
    results = through_frozen_window(
        emu,
        lambda: run_sdk(sdk_version, emu.url, emu.token, ops, config=SMALL_MULTIPART),
        enough=3,
        timeout=300,
    )
    assert results == [
        "ok",
        [{"name": "f.bin", "path": path, "is_directory": None, "file_size": 6 * MiB}],
        "ok",
    ]
    assert sha256_file(tmp_path / "d.bin") == sha256_file(src)
    assert throttled(emu) >= 3
