"""What the Transfer tab's API builds from stored values (pure; the real api-server is in tests/airflow)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    RemoteVersion,
    SourceFingerprint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.plugins.transfer_view import (
    build_payload,
    checkpoint_done_bits,
    merge_tries,
    progress_summary,
    scrub,
)

MiB = 1024 * 1024


def upload_checkpoint(parts: int, done: range | list[int], *, sha: bool = True) -> UploadCheckpoint:
    src = SourceFingerprint("/data/big.bin", parts * 16 * MiB - 5, 1, 2)
    cp = UploadCheckpoint("/Volumes/c/s/v/big.bin", src, 16 * MiB, parts, "SESSION-SECRET-abc")
    for n in done:
        cp = cp.with_part(
            n,
            f'"{hashlib.md5(str(n).encode()).hexdigest()}"',
            hashlib.sha256(b"%d" % n).digest() if sha else None,
        )
    return cp


def bits_of(unit_map: dict[str, Any]) -> set[int]:
    raw = base64.b64decode(unit_map["done"])
    return {unit_map["first"] + i for i in range(unit_map["count"]) if raw[i // 8] >> (i % 8) & 1}


def record(**over: Any) -> dict[str, Any]:
    rec = {
        "schema": "airflow-databricks-transfer/ui",
        "version": 1,
        "kind": "files_api.upload",
        "source": "/data/big.bin",
        "destination": "/Volumes/c/s/v/big.bin",
        "unit": "part",
        "units_total": 10_000,
        "bytes_total": 10_000 * 16 * MiB - 5,
        "parallelism": 4,
        "live": {
            "try_number": 2,
            "updated_at": 1796000050.0,
            "phase": "uploading",
            "bytes_done": 5000 * 16 * MiB,
            "units_done": 5000,
            "inflight": [5001, 5002, 9999],
            "rate_bps": 1.5 * MiB,
            "eta_s": 42.0,
        },
        "tries": [
            {
                "try_number": 1,
                "started_at": 1796000000.0,
                "ended_at": None,
                "state": "running",
                "resumed_units": 0,
                "resumed_bytes": 0,
                "sent_units": 37,
                "sent_bytes": 37 * 16 * MiB,
                "discarded": None,
                "error": None,
            },
            {
                "try_number": 2,
                "started_at": 1796000020.0,
                "ended_at": None,
                "state": "running",
                "resumed_units": 37,
                "resumed_bytes": 37 * 16 * MiB,
                "sent_units": 0,
                "sent_bytes": 0,
                "discarded": None,
                "error": None,
            },
        ],
        "result": None,
    }
    rec.update(over)
    return rec


RUNNING_TI = {
    "state": "running",
    "try_number": 2,
    "max_tries": 3,
    "start_date": 1796000020.0,
    "end_date": None,
}
HISTORY = {1: {"state": "failed", "start_date": 1796000000.0, "end_date": 1796000015.0}}


def test_upload_map_of_10000_parts_is_a_small_bitmap_from_the_segments() -> None:
    cp = upload_checkpoint(10_000, [*range(1, 5001), 10_000])
    head = cp.head_record()
    segments = [cp.segment_record(i) for i in range(cp.segment_count)]
    payload = build_payload(
        ti=RUNNING_TI,
        history=HISTORY,
        record=record(),
        checkpoint_head=head,
        checkpoint_segments=segments,
        xcom=None,
        now=1796000052.0,
    )
    unit_map = payload["map"]
    assert unit_map["encoding"] == "bitmap" and unit_map["first"] == 1 and unit_map["count"] == 10_000
    assert bits_of(unit_map) == {*range(1, 5001), 10_000}
    assert unit_map["done_count"] == 5001 and unit_map["inflight"] == [5001, 5002, 9999]
    assert payload["bytes_done"] == 5000 * 16 * MiB + (16 * MiB - 5)  # the checkpoint is further than live
    assert payload["rate_bps"] == 1.5 * MiB and payload["eta_s"] == 42.0 and payload["poll"] is True
    text = json.dumps(payload)
    assert len(text) < 4000, len(text)
    assert "SESSION-SECRET" not in text


def test_a_try_that_could_not_close_its_entry_is_shown_failed_from_airflow() -> None:
    tries = merge_tries(record()["tries"], RUNNING_TI, HISTORY)
    assert [t["state"] for t in tries] == ["failed", "running"]
    assert tries[0]["ended_at"] == 1796000015.0 and tries[0]["closed_by"] == "airflow"
    assert "killed" in tries[0]["error"]
    assert tries[1]["resumed_units"] == 37


def test_a_try_without_record_is_added_from_the_history() -> None:
    history = {**HISTORY, 2: {"state": "failed", "start_date": 1796000016.0, "end_date": 1796000017.0}}
    ti = {**RUNNING_TI, "try_number": 3}
    tries = merge_tries(record()["tries"][:1], ti, history)
    assert [(t["try_number"], t["recorded"]) for t in tries] == [(1, True), (2, False), (3, False)]


def test_download_map_is_zero_based_chunks() -> None:
    cp = DownloadCheckpoint(
        "/Volumes/c/s/v/x.bin",
        RemoteVersion(100 * MiB, '"e"', None),
        "/tmp/x.bin",
        "/tmp/x.part",
        0,
        100 * MiB,
        8 * MiB,
        frozenset({0, 3, 12}),
    )
    got = checkpoint_done_bits(cp.to_dict(), [])
    assert got is not None
    _bits, first, count = got
    assert (first, count) == (0, 13)
    ti = {"state": "failed", "try_number": 1, "max_tries": 0, "start_date": 1.0, "end_date": 2.0}
    payload = build_payload(
        ti=ti,
        history={},
        record=None,
        checkpoint_head=cp.to_dict(),
        checkpoint_segments=[],
        xcom=cp.progress_view(),
        now=3.0,
    )
    assert bits_of(payload["map"]) == {0, 3, 12} and payload["poll"] is False
    assert payload["bytes_done"] == cp.bytes_done and payload["unit"] == "chunk"


def test_after_success_the_final_xcom_gives_tries_result_and_a_full_map() -> None:
    final = {
        "kind": "files_api.upload",
        "destination": "/Volumes/c/s/v/big.bin",
        "source": "/data/big.bin",
        "bytes": 300,
        "phase": "done",
        "percent": 100.0,
        "unit": "part",
        "units_total": 3,
        "tries": record()["tries"],
        "result": {"bytes": 300, "parts": 3, "seconds": 1.5, "sha256": "ab" * 32},
    }
    ti = {"state": "success", "try_number": 2, "max_tries": 3, "start_date": 1.0, "end_date": 1796000099.0}
    payload = build_payload(
        ti=ti,
        history=HISTORY,
        record=None,
        checkpoint_head=None,
        checkpoint_segments=[],
        xcom=final,
        now=1796000100.0,
    )
    assert payload["map"]["done_count"] == 3 and payload["phase"] == "done" and payload["poll"] is False
    assert [t["state"] for t in payload["tries"]] == ["failed", "success"]
    assert payload["result"]["sha256"] == "ab" * 32 and payload["bytes_done"] == 300


def test_sync_files_are_counts() -> None:
    rec = record(
        kind="volume_sync",
        unit="file",
        units_total=40,
        live={
            "try_number": 2,
            "updated_at": 1.0,
            "phase": "syncing",
            "bytes_done": 10,
            "units_done": 12,
            "inflight": [],
            "inflight_count": 3,
            "rate_bps": 0.0,
            "eta_s": None,
        },
    )
    payload = build_payload(
        ti=RUNNING_TI,
        history={},
        record=rec,
        checkpoint_head=None,
        checkpoint_segments=[],
        xcom=None,
        now=2.0,
    )
    assert payload["map"] == {
        "encoding": "counts",
        "first": 1,
        "count": 40,
        "done_count": 12,
        "inflight_count": 3,
    }
    assert progress_summary(payload)["units_done"] == 12


def test_scrub_removes_url_queries_sas_and_secret_keys() -> None:
    dirty = {
        "error": "HTTP 403 for https://acct.blob.core.windows.net/c/b?sv=2024&sig=SECRETSIG&se=x: denied",
        "destination": "container/blob?sv=2024-01-01&sig=ALSOSECRET",
        "session_token": "tok",
        "nested": [{"sas_token": "x", "ok": "fine"}],
    }
    clean = json.dumps(scrub(dirty))
    assert "SECRETSIG" not in clean and "ALSOSECRET" not in clean and "tok" not in clean
    assert "sas_token" not in clean and "fine" in clean and "acct.blob.core.windows.net/c/b" in clean


def test_without_a_readable_checkpoint_the_map_counts_what_the_record_or_xcom_says() -> None:
    listed = build_payload(
        ti=RUNNING_TI,
        history={},
        record=record(),
        checkpoint_head=None,
        checkpoint_segments=[],
        xcom=None,
        now=1796000052.0,
    )
    assert listed["map"] == {
        "encoding": "counts",
        "first": 1,
        "count": 10_000,
        "done_count": 5000,
        "inflight_count": 3,
    }
    assert progress_summary(listed)["units_done"] == 5000
    cp = upload_checkpoint(8, [1, 2, 3])
    ti = {"state": "failed", "try_number": 1, "max_tries": 0, "start_date": 1.0, "end_date": 2.0}
    only_xcom = build_payload(
        ti=ti,
        history={},
        record=None,
        checkpoint_head=None,
        checkpoint_segments=[],
        xcom=cp.progress_view(),
        now=3.0,
    )
    assert only_xcom["map"]["encoding"] == "counts" and only_xcom["map"]["done_count"] == 3
    assert only_xcom["map"]["count"] == 8 and only_xcom["bytes_done"] == cp.bytes_done
