"""Checkpoints: round-trip, compactness, golden files that must keep loading, and refusal of bad input."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.engine import checkpoint as ckpt_mod
from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    RemoteVersion,
    SourceFingerprint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.engine.errors import CheckpointError, SourceChangedError

GOLDEN = Path(__file__).with_name("golden")
MiB = 1024 * 1024


def _fp(size: int = 10 * MiB) -> SourceFingerprint:
    return SourceFingerprint("/data/src.bin", size, 1_700_000_000_123_456_789, 42)


def _upload(parts: int, done: int, sha: bool = True, etag_fmt: str = '"{:032x}"') -> UploadCheckpoint:
    cp = UploadCheckpoint(
        destination="/Volumes/main/default/landing/big.bin",
        source=_fp(parts * 5 * MiB),
        part_size=5 * MiB,
        part_count=parts,
        session_token="c2Vzc2lvbi10b2tlbg",
        created_at=1_700_000_000.5,
    )
    for n in range(1, done + 1):
        digest = hashlib.sha256(str(n).encode()).digest() if sha else None
        cp = cp.with_part(n, etag_fmt.format(n * 7919), digest)
    return cp


def test_upload_round_trip_keeps_every_field() -> None:
    cp = _upload(parts=30, done=17)
    again = UploadCheckpoint.from_json(cp.to_json())
    assert again == cp
    assert again.missing_parts() == list(range(18, 31))
    assert again.bytes_done == 17 * 5 * MiB


def test_non_hex_etags_survive() -> None:
    cp = _upload(parts=3, done=2, sha=False, etag_fmt="0x8DC{:X}")  # Azure-style ETags
    assert UploadCheckpoint.from_json(cp.to_json()).parts == cp.parts


def test_thousand_parts_fit_the_state_store_limit() -> None:
    cp = _upload(parts=1000, done=1000)
    assert len(cp.to_json().encode()) < 65_535
    assert UploadCheckpoint.from_json(cp.to_json()) == cp


def test_large_uploads_split_into_segments() -> None:
    cp = _upload(parts=10_000, done=2_500)
    assert cp.segment_count == 10
    records = [cp.segment_record(i) for i in range(cp.segment_count)]
    assert all(len(json.dumps(r)) < 65_000 for r in records)
    assert len(json.dumps(cp.head_record())) < 1_000
    assert cp.segment_of(1000) == 0 and cp.segment_of(1001) == 1
    assert UploadCheckpoint.from_records(cp.head_record(), records) == cp


def test_progress_view_never_carries_the_session_token() -> None:
    view = _upload(parts=4, done=1).progress_view()
    assert "c2Vzc2lvbi10b2tlbg" not in json.dumps(view)
    assert view["parts_done"] == 1 and view["percent"] == 25.0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="someone-else/ckpt"), "not a checkpoint of this package"),
        (lambda d: d.update(kind="files_api.download"), "expected 'files_api.upload'"),
        (lambda d: d.update(version=99), "newer than this package understands"),
        (lambda d: d.update(version=0), "invalid schema version"),
        (lambda d: d.pop("source"), "corrupt upload checkpoint"),
        (lambda d: d["segments"][0].update(done="!!notbase64"), "corrupt upload checkpoint"),
        (lambda d: d["segments"][0]["etags"].update(b64="AAAA"), "do not match"),
        (lambda d: d.update(part_count=2), "outside 1..2"),
    ],
)
def test_bad_checkpoints_are_refused_with_a_reason(mutate: Any, message: str) -> None:
    data = _upload(parts=8, done=5).to_dict()
    mutate(data)
    with pytest.raises(CheckpointError, match=message):
        UploadCheckpoint.from_dict(data)


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        UploadCheckpoint.from_json(text)


def test_validation_refuses_changed_source_or_foreign_destination() -> None:
    cp = _upload(parts=4, done=2)
    assert cp.validate_for(cp.destination, cp.source) is None
    assert "not /Volumes/x" in str(cp.validate_for("/Volumes/x", cp.source))
    grown = SourceFingerprint(cp.source.path, cp.source.size + 1, cp.source.mtime_ns, cp.source.inode)
    assert "size changed" in str(cp.validate_for(cp.destination, grown))
    touched = SourceFingerprint(cp.source.path, cp.source.size, cp.source.mtime_ns + 1, cp.source.inode)
    assert "modification time" in str(cp.validate_for(cp.destination, touched))
    replaced = SourceFingerprint(cp.source.path, cp.source.size, cp.source.mtime_ns, 7)
    assert "replaced" in str(cp.validate_for(cp.destination, replaced))


def test_fingerprint_notices_a_change_on_disk(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    fp = SourceFingerprint.of(f)
    fp.ensure_unchanged()
    f.write_bytes(b"y" * 11)
    with pytest.raises(SourceChangedError, match="size changed"):
        fp.ensure_unchanged()
    f.unlink()
    with pytest.raises(SourceChangedError, match="disappeared"):
        fp.ensure_unchanged()


def _download() -> DownloadCheckpoint:
    return DownloadCheckpoint(
        source="/Volumes/main/default/landing/big.bin",
        remote=RemoteVersion(100 * MiB + 1, '"abc"', "Sat, 21 Nov 2026 06:00:00 GMT"),
        destination="/data/out.bin",
        temp_path="/data/.out.bin.adt-partial",
        offset=0,
        length=100 * MiB + 1,
        chunk_size=8 * MiB,
        done_chunks=frozenset({0, 1, 5, 12}),
        created_at=1_700_000_000.0,
    )


def test_download_round_trip() -> None:
    cp = _download()
    assert cp.chunk_count == 13
    assert DownloadCheckpoint.from_json(cp.to_json()) == cp
    assert cp.bytes_done == 3 * 8 * MiB + (100 * MiB + 1 - 12 * 8 * MiB)


def _download_v2() -> DownloadCheckpoint:
    return replace(
        _download(),
        boot_id="6f2c1c8e-3a4b-4d0e-9a51-0c6b1f0e2d7a",
        durable=True,
        data_pin='presigned "0f1e2d3c4b5a69788796a5b4c3d2e1f0"',
    )


def _upload_v2() -> UploadCheckpoint:
    """What schema 2 adds: the destination's version before the session and the session's start."""
    return replace(
        _upload(parts=30, done=17),
        pre_upload=RemoteVersion(157286400, '"0f3c"', "Sat, 21 Nov 2026 05:59:58 GMT"),
        session_started_at=1_700_000_000.25,
    )


def _azure_download() -> DownloadCheckpoint:
    """A blob download: its Content-MD5 is part of the pinned version (checked after the download)."""
    return replace(
        _download_v2(),
        kind="azure_blob.download",
        source="azure://devstoreaccount1/models/big.bin",
        remote=RemoteVersion(
            104857601, '"0x8DD1A2B3C4D5E6F"', "Sat, 21 Nov 2026 06:00:00 GMT", "q8Ws4/4g7hgt9p9YcDuFmQ=="
        ),
        data_pin=None,
    )


def _azure_upload() -> UploadCheckpoint:
    """Local -> Blob: the session token is the upload id the block ids derive from (not a credential);
    each part's "ETag" is the MD5 the service acknowledged for the block."""
    cp = _upload_v2()
    parts = {n: hashlib.md5(str(n).encode()).hexdigest()[:22] + "==" for n in cp.parts}
    return replace(
        cp,
        kind="azure_blob.upload",
        destination="azure://devstoreaccount1/models/big.bin",
        session_token="5f0c2a9e41d7b3c8",
        parts=parts,
        part_sha256={},
    )


def _blob_to_volume() -> UploadCheckpoint:
    """Blob -> Volume: the source is the blob pinned to its ETag (mtime and inode 0)."""
    return replace(
        _upload_v2(),
        kind="azure_blob.to_volume",
        source=SourceFingerprint(
            "azure://devstoreaccount1/models/big.bin", 30 * 5 * MiB, 0, 0, '"0x8DD1A2B3C4D5E6F"'
        ),
        part_sha256={},
    )


def _volume_to_blob() -> UploadCheckpoint:
    """Volume -> Blob: the Volume file without an ETag is pinned to its size and Last-Modified."""
    cp = _azure_upload()
    return replace(
        cp,
        kind="volume.to_azure_blob",
        source=SourceFingerprint(
            "/Volumes/main/default/landing/big.bin",
            cp.source.size,
            0,
            0,
            "157286400@Sat, 21 Nov 2026 05:59:58 GMT",
        ),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("azure_blob_download_v2.json", _azure_download),
        ("azure_blob_upload_v2.json", _azure_upload),
        ("azure_blob_to_volume_v2.json", _blob_to_volume),
        ("volume_to_azure_blob_v2.json", _volume_to_blob),
        ("upload_checkpoint_v1.json", lambda: _upload(parts=30, done=17)),
        ("download_checkpoint_v1.json", _download),
        ("download_checkpoint_v2.json", _download_v2),
        ("upload_checkpoint_v2.json", _upload_v2),
    ],
)
def test_golden_files_keep_loading(name: str, expected: Any) -> None:
    """Checkpoints written by released versions must load forever (or upgrade); never edit these files."""
    want = expected()
    loaded = type(want).from_json((GOLDEN / name).read_text(), want.kind)
    assert loaded == want


@pytest.mark.parametrize("make", [_azure_upload, _blob_to_volume, _volume_to_blob])
def test_a_checkpoint_resumes_only_its_own_kind(make: Any) -> None:
    """A Blob -> Volume checkpoint must not resume a local -> Volume upload of the same destination."""
    cp = make()
    assert UploadCheckpoint.from_json(cp.to_json(), cp.kind) == cp
    with pytest.raises(CheckpointError, match=f"checkpoint is a '{cp.kind}', expected 'files_api.upload'"):
        UploadCheckpoint.from_json(cp.to_json())
    with pytest.raises(CheckpointError, match="unknown upload checkpoint kind"):
        replace(cp, kind="files_api.nonsense")


def test_a_remote_source_version_is_part_of_its_identity() -> None:
    cp = _blob_to_volume()
    rewritten = replace(cp.source, version='"0x8DD1FFFFFFFFFFF"')
    assert cp.validate_for(cp.destination, rewritten) == (
        'source version changed ("0x8DD1A2B3C4D5E6F" -> "0x8DD1FFFFFFFFFFF")'
    )
    assert cp.validate_for(cp.destination, cp.source) is None


def test_download_v2_round_trip_and_v1_upgrade_is_not_durable() -> None:
    cp = _download_v2()
    assert cp.version == 2
    assert DownloadCheckpoint.from_json(cp.to_json()) == cp
    # a v1 writer never made chunks durable before naming them, nor noted the boot: unproven chunks
    old = DownloadCheckpoint.from_json((GOLDEN / "download_checkpoint_v1.json").read_text())
    assert (old.version, old.boot_id, old.durable, old.data_pin) == (2, None, False, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(durable="yes"), "expected true or false"),
        (lambda d: d.update(boot_id=7), "expected a string or null"),
        (lambda d: d.pop("durable"), "corrupt download checkpoint"),
        (lambda d: d.update(version=3), "newer than this package understands"),
        (lambda d: d.update(data_pin='presigned "x"\r\nX-Injected: 1'), "printable ASCII"),
    ],
)
def test_bad_download_checkpoints_are_refused(mutate: Any, message: str) -> None:
    data = _download_v2().to_dict()
    mutate(data)
    with pytest.raises(CheckpointError, match=message):
        DownloadCheckpoint.from_dict(data)


def test_v1_upload_checkpoints_upgrade_with_an_unknown_prior_version() -> None:
    """A v1 checkpoint never recorded the destination before its session: that must read as unknown
    (session_started_at None), never as "there was no file", which would make a lost session provable."""
    loaded = UploadCheckpoint.from_json((GOLDEN / "upload_checkpoint_v1.json").read_text())
    assert loaded.version == ckpt_mod.SCHEMA_VERSION == 2
    assert loaded.session_started_at is None and loaded.pre_upload is None
    again = UploadCheckpoint.from_json(loaded.to_json())
    assert again == loaded and json.loads(loaded.to_json())["version"] == 2


def test_v2_round_trip_keeps_the_prior_version() -> None:
    cp = _upload_v2()
    assert UploadCheckpoint.from_json(cp.to_json()) == cp
    none_before = UploadCheckpoint.from_json(
        json.dumps({**cp.to_dict(), "pre_upload": None})
    )  # "no file was there" is kept apart from "unknown"
    assert none_before.pre_upload is None and none_before.session_started_at == cp.session_started_at


def test_older_versions_are_upgraded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A v3 schema that renames a field still loads a v1 golden file through the chain of upgraders."""
    monkeypatch.setattr(ckpt_mod, "SCHEMA_VERSION", 3)

    def v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "version": 3, "created_at": d["created_at"]}

    monkeypatch.setitem(ckpt_mod.UPGRADERS, 2, v2_to_v3)
    loaded = UploadCheckpoint.from_json((GOLDEN / "upload_checkpoint_v1.json").read_text())
    assert loaded.version == 3 and loaded.parts == _upload(parts=30, done=17).parts
    monkeypatch.delitem(ckpt_mod.UPGRADERS, 2)
    with pytest.raises(CheckpointError, match="no upgrade path from checkpoint schema version 2"):
        UploadCheckpoint.from_json((GOLDEN / "upload_checkpoint_v1.json").read_text())
