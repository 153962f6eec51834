"""The Files API emulator's wire protocol, driven with plain HTTP clients over loopback.

No databricks-sdk here: these tests pin down what any client sees on the wire (status codes, headers,
JSON and XML error bodies, bytes) and what the fault plan does to it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.protocol_api import (
    ALL_DEFAULTS,
    MIN_PART,
    RO_TOKEN,
    TOKEN,
    VOL,
    VOLUME,
    Api,
    KiB,
    error_code,
    error_reasons,
    expire_in,
    http_date,
    parse_http_date,
    payload,
    raw_request,
    serve_storage_proxy,
    tamper,
    wait_until,
)

pytestmark = pytest.mark.integration


# ================================================================ auth and bootstrap


def test_well_known_answers_without_auth(api: Api) -> None:
    resp = api.anon.get(f"{api.base}/.well-known/databricks-config")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["workspace_id"] == ALL_DEFAULTS["workspace_id"]


def test_missing_token_is_401(api: Api) -> None:
    resp = api.anon.get(api.files_url(f"{VOL}/f"))
    assert resp.status_code == 401
    assert error_code(resp) == "UNAUTHENTICATED"


@pytest.mark.parametrize("header", ["Bearer not-the-token", "Basic dXNlcjpwYXNz", f"Token {TOKEN}"])
def test_wrong_token_is_401_unauthenticated(api: Api, header: str) -> None:
    api.put(f"{VOL}/f", b"x")
    resp = api.anon.get(api.files_url(f"{VOL}/f"), headers={"Authorization": header})
    assert resp.status_code == 401
    assert error_code(resp) == "UNAUTHENTICATED"


def test_read_only_token_reads_but_cannot_write(emu: FilesApiEmulator, api: Api) -> None:
    assert api.put(f"{VOL}/f.bin", b"original").status_code == 204
    ro = Api(emu, token=RO_TOKEN)
    try:
        assert ro.get(f"{VOL}/f.bin").content == b"original"
        assert ro.head(f"{VOL}/f.bin").status_code == 200
        assert ro.list_page(VOL).status_code == 200
        put = ro.put(f"{VOL}/f.bin", b"changed")
        assert put.status_code == 403
        assert error_code(put) == "PERMISSION_DENIED"
        assert ro.delete(f"{VOL}/f.bin").status_code == 403
        assert ro.mkdir(f"{VOL}/d").status_code == 403
    finally:
        ro.close()
    assert api.get(f"{VOL}/f.bin").content == b"original"
    assert api.head(f"{VOL}/d").status_code == 404


def test_mismatched_workspace_id_header_is_rejected(api: Api) -> None:
    ok = api.http.head(api.dirs_url(VOL), headers={"X-Databricks-Workspace-Id": ALL_DEFAULTS["workspace_id"]})
    assert ok.status_code == 200
    bad = api.http.get(api.dirs_url(VOL), headers={"X-Databricks-Workspace-Id": "42"})
    assert bad.status_code == 400


def test_unknown_api_is_404_endpoint_not_found(api: Api) -> None:
    resp = api.http.get(f"{api.base}/api/2.0/dbfs/list")
    assert resp.status_code == 404
    assert error_code(resp) == "ENDPOINT_NOT_FOUND"


# ================================================================ single-shot files


def test_put_creates_parents_and_get_returns_the_bytes(emu: FilesApiEmulator, api: Api) -> None:
    data = payload(100 * KiB)
    resp = api.put(f"{VOL}/a/b/c/file.bin", data)
    assert resp.status_code == 204
    assert resp.content == b""
    got = api.get(f"{VOL}/a/b/c/file.bin")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert api.http.head(api.dirs_url(f"{VOL}/a/b")).status_code == 200
    assert emu.local_path(f"{VOL}/a/b/c/file.bin").read_bytes() == data


def test_empty_file_round_trip(api: Api) -> None:
    assert api.put(f"{VOL}/empty", b"").status_code == 204
    head = api.head(f"{VOL}/empty")
    assert head.headers["Content-Length"] == "0"
    got = api.get(f"{VOL}/empty")
    assert got.status_code == 200
    assert got.content == b""


def test_chunked_put_round_trips(emu: FilesApiEmulator, api: Api) -> None:
    # the kinder reading of an unverified behaviour (the default refuses a body without a length: 411)
    emu.update_settings(workspace_put_requires_length=False)
    data = payload(300 * KiB, 11)
    blocks = (data[i : i + 64 * KiB] for i in range(0, len(data), 64 * KiB))
    resp = api.http.put(api.files_url(f"{VOL}/chunked.bin"), data=blocks)  # a generator goes out chunked
    assert resp.status_code == 204
    assert api.get(f"{VOL}/chunked.bin").content == data


def test_path_with_special_characters_round_trips(api: Api) -> None:
    path = f"{VOL}/dir a/f#1?.txt"
    assert api.put(path, b"special").status_code == 204
    assert api.get(path).content == b"special"
    names = [e["name"] for e in api.list_page(f"{VOL}/dir a").json()["contents"]]
    assert names == ["f#1?.txt"]


def test_overwrite_false_onto_existing_file_is_409(api: Api) -> None:
    path = f"{VOL}/f.bin"
    assert api.put(path, b"one", overwrite=False).status_code == 204
    resp = api.put(path, b"two", overwrite=False)
    assert resp.status_code == 409
    assert error_code(resp) == "ALREADY_EXISTS"
    assert api.get(path).content == b"one"
    assert api.put(path, b"three", overwrite=True).status_code == 204
    assert api.get(path).content == b"three"
    assert api.put(path, b"four").status_code == 204  # unspecified overwrites
    assert api.get(path).content == b"four"


def test_invalid_overwrite_value_is_400(api: Api) -> None:
    resp = api.http.put(api.files_url(f"{VOL}/f"), params={"overwrite": "maybe"}, data=b"x")
    assert resp.status_code == 400


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=990-", 990, 999),
        ("bytes=995-5000", 995, 999),  # end clipped to the file
        ("bytes=-7", 993, 999),  # suffix
        ("bytes=-5000", 0, 999),  # suffix longer than the file
    ],
)
def test_range_gives_206_with_exact_bytes(api: Api, range_header: str, start: int, end: int) -> None:
    data = payload(1000, seed=3)
    api.put(f"{VOL}/r.bin", data)
    resp = api.get(f"{VOL}/r.bin", headers={"Range": range_header})
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/1000"
    assert resp.headers["Content-Length"] == str(end - start + 1)
    assert resp.content == data[start : end + 1]


@pytest.mark.parametrize("range_header", ["bytes=1000-", "bytes=5000-6000", "bytes=1000-1000"])
def test_unsatisfiable_range_is_416(api: Api, range_header: str) -> None:
    api.put(f"{VOL}/r.bin", payload(1000))
    resp = api.get(f"{VOL}/r.bin", headers={"Range": range_header})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */1000"
    assert resp.content == b""


def test_zero_length_suffix_range_is_416(api: Api) -> None:
    """RFC 9110 section 14.1.1: a suffix-range is satisfiable only with a non-zero suffix-length."""
    api.put(f"{VOL}/r.bin", payload(1000))
    resp = api.get(f"{VOL}/r.bin", headers={"Range": "bytes=-0"})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */1000"


def test_if_unmodified_since(api: Api) -> None:
    data = payload(500)
    api.put(f"{VOL}/f.bin", data)
    last_modified = api.head(f"{VOL}/f.bin").headers["Last-Modified"]
    older = http_date(parse_http_date(last_modified) - 60)
    newer = http_date(parse_http_date(last_modified) + 60)

    stale = api.get(f"{VOL}/f.bin", headers={"If-Unmodified-Since": older})
    assert stale.status_code == 412
    assert error_code(stale) == "PRECONDITION_FAILED"
    for since in (last_modified, newer):
        assert api.get(f"{VOL}/f.bin", headers={"If-Unmodified-Since": since}).content == data
    resumed = api.get(f"{VOL}/f.bin", headers={"If-Unmodified-Since": last_modified, "Range": "bytes=100-"})
    assert resumed.status_code == 206
    assert resumed.content == data[100:]
    assert (
        api.get(f"{VOL}/f.bin", headers={"If-Unmodified-Since": older, "Range": "bytes=100-"}).status_code
        == 412
    )


def test_if_match(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(files_api_etag=True)  # the ETag-on reading; the default is in test_emulator_versions
    api.put(f"{VOL}/f.bin", b"content")
    etag = api.head(f"{VOL}/f.bin").headers["ETag"]
    assert api.get(f"{VOL}/f.bin", headers={"If-Match": '"0000"'}).status_code == 412
    right = api.get(f"{VOL}/f.bin", headers={"If-Match": etag})
    assert right.status_code == 200
    assert right.content == b"content"
    assert api.get(f"{VOL}/f.bin", headers={"If-Match": f'"nope", {etag}'}).status_code == 200
    assert api.get(f"{VOL}/f.bin", headers={"If-Match": "*"}).status_code == 200


def test_head_gives_metadata_without_body(api: Api) -> None:
    data = payload(12345)
    before = time.time()
    api.put(f"{VOL}/f.bin", data)
    head = api.head(f"{VOL}/f.bin")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == "12345"
    assert head.headers["Content-Type"] == "application/octet-stream"
    assert parse_http_date(head.headers["Last-Modified"]) >= int(before)
    get = api.get(f"{VOL}/f.bin")
    assert "ETag" not in head.headers and "ETag" not in get.headers  # the default: no ETag on /fs/files
    assert head.headers["Last-Modified"] == get.headers["Last-Modified"]


def test_head_of_missing_file_is_404_with_empty_body(api: Api) -> None:
    resp = api.head(f"{VOL}/missing")
    assert resp.status_code == 404
    assert resp.content == b""


def test_get_of_missing_file_is_404_json(api: Api) -> None:
    resp = api.get(f"{VOL}/missing")
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/json"
    assert error_code(resp) == "NOT_FOUND"
    assert "message" in resp.json()


def test_get_and_head_of_a_directory_are_404(api: Api) -> None:
    api.mkdir(f"{VOL}/dir")
    assert api.get(f"{VOL}/dir").status_code == 404
    assert api.head(f"{VOL}/dir").status_code == 404
    assert api.delete(f"{VOL}/dir").status_code == 404
    assert api.http.head(api.dirs_url(f"{VOL}/dir")).status_code == 200


def test_delete_then_get_is_404(api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"x")
    resp = api.delete(f"{VOL}/f.bin")
    assert resp.status_code in (200, 204)
    assert api.get(f"{VOL}/f.bin").status_code == 404
    again = api.delete(f"{VOL}/f.bin")
    assert again.status_code == 404
    assert error_code(again) == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/tmp/file.bin", "/Volumes/main/default", "/Workspace/Users/me/f"])
def test_path_outside_a_volume_is_400(api: Api, path: str) -> None:
    for resp in (api.put(path, b"x"), api.get(path)):
        assert resp.status_code == 400
        assert error_code(resp) == "INVALID_PARAMETER_VALUE"
        assert "/Volumes/<catalog>/<schema>/<volume>" in resp.json()["message"]


def test_dot_dot_segments_cannot_escape_the_volume(emu: FilesApiEmulator) -> None:
    target = "/api/2.0/fs/files/Volumes/main/default/landing/../../../../escape.bin"
    status, _, body = raw_request(emu, "PUT", target, {"Authorization": f"Bearer {TOKEN}"}, b"evil")
    assert status == 400
    assert json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not list(emu.root.rglob("escape.bin"))
    assert not (emu.root.parent / "escape.bin").exists()


def test_missing_volume_is_404(api: Api) -> None:
    resp = api.put("/Volumes/main/default/nope/f.bin", b"x")
    assert resp.status_code == 404
    assert error_code(resp) == "NOT_FOUND"
    assert "main.default.nope" in resp.json()["message"]
    assert api.get("/Volumes/main/default/nope/f.bin").status_code == 404
    assert api.mkdir("/Volumes/main/default/nope/d").status_code == 404


def test_put_where_a_directory_or_a_file_parent_is_in_the_way_is_409(api: Api) -> None:
    api.mkdir(f"{VOL}/dir")
    assert api.put(f"{VOL}/dir", b"x").status_code == 409
    api.put(f"{VOL}/file", b"x")
    assert api.put(f"{VOL}/file/child", b"x").status_code == 409


def test_rewrite_within_the_same_second_changes_last_modified_and_etag(
    emu: FilesApiEmulator, api: Api
) -> None:
    # the kind readings, opted into; the real one-second Last-Modified is in test_emulator_versions
    emu.update_settings(last_modified_bump=True, files_api_etag=True)
    path = f"{VOL}/f.bin"
    api.put(path, b"version 1")
    first = api.head(path).headers
    api.put(path, b"version 2")
    second = api.head(path).headers
    assert parse_http_date(second["Last-Modified"]) > parse_http_date(first["Last-Modified"])
    assert second["ETag"] != first["ETag"]
    # so a client resuming a download of version 1 learns that the file changed
    stale = api.get(path, headers={"If-Unmodified-Since": first["Last-Modified"], "Range": "bytes=3-"})
    assert stale.status_code == 412
    assert api.get(path, headers={"If-Match": first["ETag"]}).status_code == 412


# ================================================================ directories


def test_mkdir_is_idempotent_and_creates_parents(api: Api) -> None:
    for _ in range(2):
        resp = api.mkdir(f"{VOL}/x/y/z")
        assert resp.status_code in (200, 204)
    for path in (f"{VOL}/x", f"{VOL}/x/y", f"{VOL}/x/y/z", f"{VOL}/x/y/z/"):
        assert api.http.head(api.dirs_url(path)).status_code == 200
    missing = api.http.head(api.dirs_url(f"{VOL}/x/nope"))
    assert missing.status_code == 404
    assert missing.content == b""
    assert api.mkdir(f"{VOL}/trailing/").status_code in (200, 204)
    assert api.http.head(api.dirs_url(f"{VOL}/trailing")).status_code == 200


def test_list_pages_through_every_entry(api: Api) -> None:
    sizes = {f"file-{i}.bin": i * 10 for i in range(7)}
    for name, size in sizes.items():
        api.put(f"{VOL}/dir/{name}", payload(size))
    api.mkdir(f"{VOL}/dir/sub-a")
    api.mkdir(f"{VOL}/dir/sub-b/deeper")

    entries: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        resp = api.list_page(f"{VOL}/dir", page_size=3, token=token)
        assert resp.status_code == 200
        body = resp.json()
        assert len(body["contents"]) <= 3
        entries.extend(body["contents"])
        pages += 1
        token = body.get("next_page_token")
        if not token:
            assert "next_page_token" not in body
            break
        assert pages < 10
    assert pages == 3
    by_name = {e["name"]: e for e in entries}
    assert len(entries) == len(by_name) == 9
    assert set(by_name) == {*sizes, "sub-a", "sub-b"}
    for name, size in sizes.items():
        # proto3 JSON: false and zero are omitted (test_emulator_listing.py pins that down)
        assert by_name[name].get("is_directory", False) is False
        assert by_name[name].get("file_size", 0) == size
        assert by_name[name]["path"] == f"{VOL}/dir/{name}"
        assert isinstance(by_name[name]["last_modified"], int)
        assert by_name[name]["last_modified"] > 1_000_000_000_000  # milliseconds
    for name in ("sub-a", "sub-b"):
        assert by_name[name]["is_directory"] is True
        assert "file_size" not in by_name[name]
        assert by_name[name]["path"].rstrip("/") == f"{VOL}/dir/{name}"


def test_list_without_page_size_returns_everything_and_no_token(api: Api) -> None:
    for i in range(5):
        api.put(f"{VOL}/d/{i}", b"x")
    body = api.list_page(f"{VOL}/d").json()
    assert sorted(e["name"] for e in body["contents"]) == ["0", "1", "2", "3", "4"]
    assert "next_page_token" not in body


def test_list_of_a_missing_directory_or_a_file_is_404(api: Api) -> None:
    assert api.list_page(f"{VOL}/missing").status_code == 404
    api.put(f"{VOL}/file", b"x")
    assert api.list_page(f"{VOL}/file").status_code == 404


def test_delete_of_a_non_empty_directory_is_400_with_reason(api: Api) -> None:
    api.put(f"{VOL}/dir/f", b"x")
    resp = api.http.delete(api.dirs_url(f"{VOL}/dir"))
    assert resp.status_code == 400
    assert "FILES_API_DIRECTORY_IS_NOT_EMPTY" in error_reasons(resp)
    assert api.get(f"{VOL}/dir/f").content == b"x"
    api.delete(f"{VOL}/dir/f")
    assert api.http.delete(api.dirs_url(f"{VOL}/dir")).status_code in (200, 204)
    assert api.http.head(api.dirs_url(f"{VOL}/dir")).status_code == 404


def test_mkdir_where_a_file_exists_is_409(api: Api) -> None:
    api.put(f"{VOL}/thing", b"x")
    assert api.mkdir(f"{VOL}/thing").status_code == 409
    assert api.mkdir(f"{VOL}/thing/below").status_code == 409
    assert api.get(f"{VOL}/thing").content == b"x"


def test_delete_of_a_missing_directory_is_404(api: Api) -> None:
    resp = api.http.delete(api.dirs_url(f"{VOL}/missing"))
    assert resp.status_code == 404
    assert error_code(resp) == "NOT_FOUND"


# ================================================================ multipart through presigned URLs


def test_multipart_upload_round_trip(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/big/multi.bin"
    chunks = [payload(MIN_PART, 1), payload(MIN_PART + 7, 2), payload(1234, 3)]
    token = api.initiate(path)

    first = api.part_urls(path, token, 1, 2)
    assert [u["part_number"] for u in first] == [1, 2]
    rest = api.part_urls(path, token, 3, 5)
    assert [u["part_number"] for u in rest] == [3, 4, 5, 6, 7]
    for entry in first + rest:
        assert entry["url"].startswith(emu.url + "/")
        assert isinstance(entry["headers"], list)
    urls = {u["part_number"]: u["url"] for u in first + rest}
    # the headers handed out with each URL are part of what it signs: send them as given
    signed = {u["part_number"]: {h["name"]: h["value"] for h in u["headers"]} for u in first + rest}

    parts = []
    for number, chunk in enumerate(chunks, start=1):
        # no Authorization: presigned URLs carry their own
        resp = api.anon.put(urls[number], data=chunk, headers=signed[number])
        assert resp.status_code == 200
        assert resp.headers["ETag"]
        parts.append((number, resp.headers["ETag"]))
    assert api.head(path).status_code == 404  # nothing visible before complete

    done = api.complete(path, token, parts)
    assert done.status_code == 200, done.text
    assert api.get(path).content == b"".join(chunks)
    assert emu.local_path(path).read_bytes() == b"".join(chunks)
    assert emu.sessions() == []


def test_parts_uploaded_in_parallel_complete_in_order(api: Api) -> None:
    path = f"{VOL}/parallel.bin"
    chunks = [payload(MIN_PART, n) for n in range(1, 9)] + [payload(77, 99)]
    token = api.initiate(path)
    urls = {u["part_number"]: u["url"] for u in api.part_urls(path, token, 1, len(chunks))}

    def send(number: int) -> tuple[int, str]:
        with requests.Session() as s:
            s.trust_env = False
            resp = s.put(
                urls[number], data=chunks[number - 1], headers={"Content-Type": "application/octet-stream"}
            )
        assert resp.status_code == 200
        return number, resp.headers["ETag"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = sorted(pool.map(send, reversed(range(1, len(chunks) + 1))))
    assert api.complete(path, token, parts).status_code == 200
    assert api.get(path).content == b"".join(chunks)


def test_unquoted_etags_are_accepted_at_complete(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [b"only part"])
    assert api.complete(path, token, [(n, e.strip('"')) for n, e in parts]).status_code == 200
    assert api.get(path).content == b"only part"


def test_part_can_be_uploaded_again_before_complete(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    api.put_part(url, b"first try")
    etag = api.put_part(url, b"second try").headers["ETag"]
    assert api.complete(path, token, [(1, etag)]).status_code == 200
    assert api.get(path).content == b"second try"


def test_complete_with_a_wrong_etag_is_400_and_the_session_survives(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [payload(MIN_PART), b"tail"])
    bad = api.complete(path, token, [parts[0], (2, '"not-the-etag"')])
    assert bad.status_code == 400
    assert error_code(bad) == "INVALID_PARAMETER_VALUE"
    assert api.head(path).status_code == 404
    assert api.complete(path, token, parts).status_code == 200


def test_complete_with_a_part_never_uploaded_is_400(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [payload(MIN_PART)])
    resp = api.complete(path, token, [*parts, (2, parts[0][1])])
    assert resp.status_code == 400
    assert "Part 2" in resp.json()["message"]


@pytest.mark.parametrize("number", [0, 10001, -1])
def test_part_number_out_of_range_is_400(emu: FilesApiEmulator, api: Api, number: int) -> None:
    serve_storage_proxy(emu)
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    assert api.part_urls_resp(path, token, number, 1).status_code == 400
    parts = api.upload_parts(path, token, [b"x"])
    assert api.complete(path, token, [*parts, (number, parts[0][1])]).status_code == 400
    proxy = api.http.put(
        api.files_url(path),
        params={"session_token": token, "upload_type": "multipart", "part_number": str(number)},
        data=b"x",
    )
    assert proxy.status_code == 400


def test_part_urls_stop_at_the_part_limit(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    urls = api.part_urls(path, token, 9998, 10)
    assert [u["part_number"] for u in urls] == [9998, 9999, 10000]


@pytest.mark.parametrize("order", [[2, 1], [1, 1, 2]])
def test_complete_with_parts_out_of_order_or_repeated_is_400(api: Api, order: list[int]) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    etags = dict(api.upload_parts(path, token, [payload(MIN_PART), b"tail"]))
    resp = api.complete(path, token, [(n, etags[n]) for n in order])
    assert resp.status_code == 400


def test_non_last_part_below_the_minimum_is_400(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [payload(MIN_PART - 1), b"tail"])
    resp = api.complete(path, token, parts)
    assert resp.status_code == 400
    assert str(MIN_PART) in resp.json()["message"]
    assert api.head(path).status_code == 404


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_to_create_upload_part_urls_is_400(api: Api, body: bytes) -> None:
    resp = api.http.post(
        f"{api.base}/api/2.0/fs/create-upload-part-urls",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    assert error_code(resp) == "MALFORMED_REQUEST"


@pytest.mark.parametrize("missing", ["path", "session_token", "start_part_number", "count"])
def test_create_upload_part_urls_requires_every_field(api: Api, missing: str) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    body = {"path": path, "session_token": token, "start_part_number": 1, "count": 1}
    del body[missing]
    resp = api.http.post(f"{api.base}/api/2.0/fs/create-upload-part-urls", json=body)
    assert resp.status_code == 400
    assert missing in resp.json()["message"]


def test_session_token_is_bound_to_its_path(api: Api) -> None:
    token = api.initiate(f"{VOL}/a.bin")
    assert api.part_urls_resp(f"{VOL}/b.bin", token, 1, 1).status_code == 400
    assert api.complete(f"{VOL}/b.bin", token, [(1, '"x"')]).status_code == 400
    assert api.part_urls_resp(f"{VOL}/a.bin", "no-such-session", 1, 1).status_code == 404


def test_overwrite_false_multipart_onto_existing_file_is_409_at_complete(api: Api) -> None:
    path = f"{VOL}/f.bin"
    api.put(path, b"keep me")
    token = api.initiate(path, overwrite=False)
    parts = api.upload_parts(path, token, [b"replacement"])
    resp = api.complete(path, token, parts)
    assert resp.status_code == 409
    assert error_code(resp) == "ALREADY_EXISTS"
    assert api.get(path).content == b"keep me"
    assert api.abort(path, token).status_code == 200


def test_abort_then_complete_is_404(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 2)
    parts = api.upload_parts(path, token, [b"part one"])
    assert len(emu.sessions()) == 1
    assert api.abort(path, token).status_code == 200
    assert emu.sessions() == []
    resp = api.complete(path, token, parts)
    assert resp.status_code == 404
    assert error_code(resp) == "NOT_FOUND"
    late = api.put_part(url, b"late part")
    assert late.status_code == 404
    assert "<Code>NoSuchUpload</Code>" in late.text
    assert api.abort(path, token).status_code == 404
    assert api.head(path).status_code == 404


def test_presigned_put_with_an_authorization_header_is_400(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    resp = api.http.put(url, data=b"leaky")  # the authenticated session leaks the workspace token
    assert resp.status_code == 400
    assert "<Code>InvalidArgument</Code>" in resp.text
    assert emu.sessions()[0]["parts"] == []


@pytest.mark.parametrize("change", [{"n": "2"}, {"t": "x" * 43}, {"X-Emu-Expires": "9999999999"}])
def test_tampered_presigned_url_is_403_signature_does_not_match(
    emu: FilesApiEmulator, api: Api, change: dict[str, str]
) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = tamper(api.part_url(path, token, 1), **change)
    resp = api.put_part(url, b"data")
    assert resp.status_code == 403
    assert resp.headers["Content-Type"] == "application/xml"
    assert "<Code>SignatureDoesNotMatch</Code>" in resp.text
    assert emu.sessions()[0]["parts"] == []


@pytest.mark.parametrize(
    ("cloud", "markers"),
    [
        ("AWS", ["<Code>AccessDenied</Code>", "<Message>Request has expired</Message>"]),
        ("AZURE", ["<Code>AuthenticationFailed</Code>", "Signature not valid in the specified time frame"]),
        ("GCP", ["<Code>ExpiredToken</Code>"]),
    ],
)
def test_url_expired_on_the_server_clock_is_403_expired(
    emu: FilesApiEmulator, api: Api, cloud: str, markers: list[str]
) -> None:
    emu.update_settings(cloud=cloud)
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_urls(path, token, 1, 1, expire_time=expire_in(60))[0]["url"]
    emu.update_settings(clock_offset_s=120)  # the server's clock passes the URL's expiry
    resp = api.put_part(url, b"data")
    emu.update_settings(clock_offset_s=0)
    assert resp.status_code == 403
    for marker in markers:
        assert marker in resp.text
    # a fresh URL for the same part works: the session itself is fine
    fresh = api.put_part(api.part_url(path, token, 1), b"data")
    assert fresh.status_code == (201 if cloud == "AZURE" else 200)  # an Azure Put Block is 201 Created


def test_invalid_expire_time_is_400(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    assert api.part_urls_resp(path, token, 1, 1, expire_time="tomorrow").status_code == 400


def test_upload_session_expires(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(session_ttl_s=1.0)
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    expires_at = emu.sessions()[0]["expires_at"]
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)
    serve_storage_proxy(emu)  # so the proxy PUT below meets the lost session, not a missing endpoint

    part = api.put_part(url, b"too late")
    assert part.status_code == 404
    assert "<Code>NoSuchUpload</Code>" in part.text
    proxy = api.http.put(
        api.files_url(path),
        params={"session_token": token, "upload_type": "multipart", "part_number": "1"},
        data=b"too late",
    )
    assert proxy.status_code == 404
    resp = api.complete(path, token, [(1, '"x"')])
    assert resp.status_code == 404
    assert error_code(resp) == "NOT_FOUND"
    assert api.part_urls_resp(path, token, 1, 1).status_code == 404
    assert emu.sessions() == []


def test_sessions_survive_an_emulator_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    path = f"{VOL}/resumed.bin"
    chunks = [payload(2048, 1), payload(2048, 2), payload(100, 3)]
    with FilesApiEmulator(root, volumes=[VOLUME], min_part_size_bytes=1024) as first:
        api = Api(first, token=first.token)
        token = api.initiate(path)
        parts = api.upload_parts(path, token, chunks[:2])
        api.close()

    with FilesApiEmulator(root, min_part_size_bytes=1024) as second:
        api = Api(second, token=second.token)
        sessions = second.sessions()
        assert [(s["path"], [p["number"] for p in s["parts"]]) for s in sessions] == [(path, [1, 2])]
        # URLs minted by the first server named its port; mint new ones here
        last = api.put_part(api.part_url(path, token, 3), chunks[2])
        assert last.status_code == 200
        done = api.complete(path, token, [*parts, (3, last.headers["ETag"])])
        assert done.status_code == 200, done.text
        assert api.get(path).content == b"".join(chunks)
        api.close()


# ================================================================ storage-proxy multipart


def test_storage_proxy_part_put_then_complete(emu: FilesApiEmulator, api: Api) -> None:
    serve_storage_proxy(emu)
    path = f"{VOL}/proxy.bin"
    chunks = [payload(MIN_PART, 5), payload(999, 6)]
    token = api.initiate(path)
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        params = {"session_token": token, "upload_type": "multipart", "part_number": str(number)}
        unauthenticated = api.anon.put(api.files_url(path), params=params, data=chunk)
        assert unauthenticated.status_code == 401
        resp = api.http.put(
            api.files_url(path),
            params=params,
            data=chunk,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code in (200, 201)
        parts.append((number, resp.headers["ETag"]))
    assert api.complete(path, token, parts).status_code == 200
    assert api.get(path).content == b"".join(chunks)
    assert {r.part_number for r in emu.requests("files.proxy_multipart") if r.status == 200} == {1, 2}


# ================================================================ legacy GCP resumable and presigned abort


def resumable_session(api: Api, path: str, overwrite: bool | None = None) -> tuple[str, str]:
    params = {} if overwrite is None else {"overwrite": str(overwrite).lower()}
    init = api.action(path, "initiate-upload", **params)
    assert init.status_code == 200
    body = init.json()
    assert "multipart_upload" not in body
    token: str = body["resumable_upload"]["session_token"]
    resp = api.http.post(
        f"{api.base}/api/2.0/fs/create-resumable-upload-url", json={"path": path, "session_token": token}
    )
    assert resp.status_code == 200, resp.text
    url: str = resp.json()["resumable_upload_url"]["url"]
    return token, url


def chunk_put(api: Api, url: str, content_range: str, data: bytes = b"") -> requests.Response:
    return api.anon.put(
        url, data=data, headers={"Content-Range": content_range, "Content-Type": "application/octet-stream"}
    )


def test_resumable_upload_round_trip(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable")
    path = f"{VOL}/gcs.bin"
    data = payload(250_001, 9)
    _, url = resumable_session(api, path)

    nothing_yet = chunk_put(api, url, "bytes */*")
    assert nothing_yet.status_code == 308
    assert "Range" not in nothing_yet.headers

    first = chunk_put(api, url, "bytes 0-99999/*", data[:100_000])
    assert first.status_code == 308
    assert first.headers["Range"] == "bytes=0-99999"
    status = chunk_put(api, url, "bytes */*")
    assert status.status_code == 308
    assert status.headers["Range"] == "bytes=0-99999"
    assert status.content == b""

    second = chunk_put(api, url, "bytes 100000-199999/*", data[100_000:200_000])
    assert second.status_code == 308
    assert second.headers["Range"] == "bytes=0-199999"
    assert api.head(path).status_code == 404

    last = chunk_put(api, url, f"bytes 200000-{len(data) - 1}/{len(data)}", data[200_000:])
    assert last.status_code == 200
    assert api.get(path).content == data
    assert emu.sessions() == []


def test_resumable_chunk_must_not_leave_a_gap(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable")
    _, url = resumable_session(api, f"{VOL}/gap.bin")
    chunk_put(api, url, "bytes 0-9/*", b"0123456789")
    gap = chunk_put(api, url, "bytes 20-29/*", b"x" * 10)
    assert gap.status_code == 400
    status = chunk_put(api, url, "bytes */*")
    assert status.headers["Range"] == "bytes=0-9"


def test_resumable_overwrite_false_onto_existing_is_412_at_the_end(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable")
    path = f"{VOL}/exists.bin"
    api.put(path, b"keep me")
    _, url = resumable_session(api, path, overwrite=False)
    first = chunk_put(api, url, "bytes 0-4/*", b"12345")
    assert first.status_code == 308
    last = chunk_put(api, url, "bytes 5-9/10", b"67890")
    assert last.status_code == 412
    assert api.get(path).content == b"keep me"


def test_resumable_url_delete_aborts(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable")
    _, url = resumable_session(api, f"{VOL}/r.bin")
    chunk_put(api, url, "bytes 0-4/*", b"12345")
    assert api.anon.delete(url).status_code == 200
    assert emu.sessions() == []
    assert chunk_put(api, url, "bytes 5-9/10", b"67890").status_code == 404


def test_legacy_create_abort_upload_url_then_unauthenticated_delete(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [b"part"])
    resp = api.http.post(
        f"{api.base}/api/2.0/fs/create-abort-upload-url",
        json={"path": path, "session_token": token, "expire_time": "2099-01-01T00:00:00Z"},
    )
    assert resp.status_code == 200
    abort = resp.json()["abort_upload_url"]
    assert isinstance(abort["headers"], list)
    deleted = api.anon.delete(abort["url"])
    assert deleted.status_code == 200
    assert emu.sessions() == []
    assert api.complete(path, token, parts).status_code == 404
    assert api.anon.delete(abort["url"]).status_code == 404


# ================================================================ presigned download


def test_create_download_url_then_presigned_get_with_range(api: Api) -> None:
    data = payload(300_000, 4)
    path = f"{VOL}/dl.bin"
    api.put(path, data)
    resp = api.download_url(path)
    assert resp.status_code == 200
    url = resp.json()["url"]
    assert isinstance(resp.json()["headers"], list)

    whole = api.anon.get(url)
    assert whole.status_code == 200
    assert whole.content == data
    ranged = api.anon.get(url, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == "bytes 1000-1999/300000"
    assert ranged.content == data[1000:2000]
    tail = api.anon.get(
        url, headers={"Range": "bytes=299990-", "If-Unmodified-Since": whole.headers["Last-Modified"]}
    )
    assert tail.content == data[-10:]

    api.put(path, b"changed")
    # the storage's ETag tells the versions apart even within one Last-Modified second
    stale = api.anon.get(url, headers={"Range": "bytes=10-", "If-Match": whole.headers["ETag"]})
    assert stale.status_code == 412


def test_create_download_url_of_a_missing_file_is_404(api: Api) -> None:
    resp = api.download_url(f"{VOL}/missing.bin")
    assert resp.status_code == 404
    assert error_code(resp) == "NOT_FOUND"


def test_presigned_download_of_a_deleted_file_is_404_xml(api: Api) -> None:
    path = f"{VOL}/gone.bin"
    api.put(path, b"x")
    url = api.download_url(path).json()["url"]
    api.delete(path)
    resp = api.anon.get(url)
    assert resp.status_code == 404
    assert "<Code>NoSuchKey</Code>" in resp.text


def test_presigned_urls_disabled(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(presigned_enabled=False)
    api.put(f"{VOL}/f.bin", b"x")
    for resp in (api.download_url(f"{VOL}/f.bin"), api.action(f"{VOL}/g.bin", "initiate-upload")):
        assert resp.status_code == 403
        assert error_code(resp) == "PERMISSION_DENIED"
        assert "FILES_API_API_IS_NOT_ENABLED" in error_reasons(resp)


# ================================================================ Unity Catalog


def test_unity_catalog_lifecycle(api: Api) -> None:
    cat = api.uc("POST", "catalogs", {"name": "cat1", "comment": "c"})
    assert cat.status_code == 200
    assert cat.json()["full_name"] == "cat1"
    schema = api.uc("POST", "schemas", {"name": "s1", "catalog_name": "cat1"})
    assert schema.status_code == 200
    assert schema.json()["full_name"] == "cat1.s1"
    vol = api.uc(
        "POST",
        "volumes",
        {"catalog_name": "cat1", "schema_name": "s1", "name": "v1", "volume_type": "MANAGED"},
    )
    assert vol.status_code == 200
    assert vol.json()["full_name"] == "cat1.s1.v1"
    assert vol.json()["volume_type"] == "MANAGED"

    assert api.uc("GET", "catalogs/cat1").json()["name"] == "cat1"
    assert api.uc("GET", "schemas/cat1.s1").json()["catalog_name"] == "cat1"
    got = api.uc("GET", "volumes/cat1.s1.v1").json()
    assert (got["catalog_name"], got["schema_name"], got["name"]) == ("cat1", "s1", "v1")
    assert "cat1" in [c["name"] for c in api.uc("GET", "catalogs").json()["catalogs"]]
    assert [s["name"] for s in api.uc("GET", "schemas", catalog_name="cat1").json()["schemas"]] == ["s1"]
    volumes = api.uc("GET", "volumes", catalog_name="cat1", schema_name="s1").json()["volumes"]
    assert [v["full_name"] for v in volumes] == ["cat1.s1.v1"]

    # the new volume takes files at once
    assert api.put("/Volumes/cat1/s1/v1/f.bin", b"hello").status_code == 204

    for rest, body in (
        ("catalogs", {"name": "cat1"}),
        ("schemas", {"name": "s1", "catalog_name": "cat1"}),
        ("volumes", {"catalog_name": "cat1", "schema_name": "s1", "name": "v1"}),
    ):
        dup = api.uc("POST", rest, body)
        assert dup.status_code == 409
        assert error_code(dup) == "RESOURCE_ALREADY_EXISTS"

    assert api.uc("DELETE", "volumes/cat1.s1.v1").status_code == 200
    assert api.uc("DELETE", "schemas/cat1.s1").status_code == 200
    assert api.uc("DELETE", "catalogs/cat1").status_code == 200
    for rest in ("catalogs/cat1", "schemas/cat1.s1", "volumes/cat1.s1.v1"):
        missing = api.uc("GET", rest)
        assert missing.status_code == 404
        assert error_code(missing) == "NOT_FOUND"


def test_unity_catalog_missing_objects_are_404(api: Api) -> None:
    assert api.uc("GET", "catalogs/nope").status_code == 404
    assert api.uc("DELETE", "volumes/main.default.nope").status_code == 404
    assert api.uc("POST", "schemas", {"name": "s", "catalog_name": "nope"}).status_code == 404
    assert (
        api.uc("POST", "volumes", {"catalog_name": "main", "schema_name": "nope", "name": "v"}).status_code
        == 404
    )
    assert api.uc("GET", "schemas", catalog_name="nope").status_code == 404


def test_unity_catalog_create_needs_names(api: Api) -> None:
    assert api.uc("POST", "catalogs", {}).status_code == 400
    assert api.uc("POST", "schemas", {"name": "s"}).status_code == 400
    assert api.uc("POST", "volumes", {"name": "v", "catalog_name": "main"}).status_code == 400
    assert api.uc("POST", "catalogs", {"name": "a.b"}).status_code == 400


def test_volume_delete_removes_its_files(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/dir/f.bin", b"x")
    local = emu.local_path(f"{VOL}/dir/f.bin")
    assert local.exists()
    assert api.uc("DELETE", f"volumes/{VOLUME}").status_code == 200
    assert not local.exists()
    assert api.get(f"{VOL}/dir/f.bin").status_code == 404
    assert api.put(f"{VOL}/dir/f.bin", b"x").status_code == 404  # the volume is gone
    assert api.uc("POST", "volumes", {"catalog_name": "main", "schema_name": "default", "name": "landing"}).ok
    assert api.get(f"{VOL}/dir/f.bin").status_code == 404  # a new volume starts empty


def test_non_empty_catalog_delete_needs_force(api: Api) -> None:
    api.uc("POST", "catalogs", {"name": "cat2"})
    api.uc("POST", "schemas", {"name": "s", "catalog_name": "cat2"})
    refused = api.uc("DELETE", "catalogs/cat2")
    assert refused.status_code == 400
    assert api.uc("GET", "schemas/cat2.s").status_code == 200
    assert api.uc("DELETE", "catalogs/cat2", force="true").status_code == 200
    assert api.uc("GET", "schemas/cat2.s").status_code == 404


# ================================================================ faults


@pytest.mark.parametrize(
    ("status", "code"), [(429, "REQUEST_LIMIT_EXCEEDED"), (503, "TEMPORARILY_UNAVAILABLE")]
)
def test_throttling_fault_carries_retry_after(
    emu: FilesApiEmulator, api: Api, status: int, code: str
) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    rule = emu.add_fault(route="files.get", status=status, retry_after_s=3)
    resp = api.get(f"{VOL}/f.bin")
    assert resp.status_code == status
    assert resp.headers["Retry-After"] == "3"
    assert error_code(resp) == code
    assert api.get(f"{VOL}/f.bin").content == b"data"  # fired once
    wait_until(lambda: [r.fault for r in emu.requests("files.get")] == [rule.id, None])


def test_status_fault_on_head_has_no_body(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    emu.add_fault(route="files.head", status=503, retry_after_s=1)
    resp = api.head(f"{VOL}/f.bin")
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.content == b""


def test_fault_window_nth_and_times(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    emu.add_fault(route="files.head", method="HEAD", nth=2, times=2, status=503)
    assert [api.head(f"{VOL}/f.bin").status_code for _ in range(5)] == [200, 503, 503, 200, 200]


def test_fault_forever_until_removed(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    rule = emu.add_fault(route="files.get", path=f"{VOL}/*", times=None, status=500)
    assert [api.get(f"{VOL}/f.bin").status_code for _ in range(3)] == [500, 500, 500]
    assert emu.server.faults.remove(rule.id)
    assert api.get(f"{VOL}/f.bin").status_code == 200


def test_fault_matches_path_glob_and_part_number(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/other.bin", b"data")
    emu.add_fault(route="files.get", path="*/target-*", times=None, status=500)
    assert api.get(f"{VOL}/other.bin").status_code == 200
    api.put(f"{VOL}/target-1", b"x")
    assert api.get(f"{VOL}/target-1").status_code == 500

    path = f"{VOL}/parts.bin"
    token = api.initiate(path)
    emu.add_fault(route="presigned.part", part_number=2, status=500)
    statuses = [api.put_part(api.part_url(path, token, n), payload(MIN_PART)).status_code for n in (1, 2, 3)]
    assert statuses == [200, 500, 200]
    assert api.put_part(api.part_url(path, token, 2), payload(MIN_PART)).status_code == 200


def test_throttling_fault_on_a_presigned_part_carries_retry_after(emu: FilesApiEmulator, api: Api) -> None:
    """A rule's Retry-After reaches data-plane clients too, so a client's wait can follow the server's."""
    path = f"{VOL}/throttled-part.bin"
    token = api.initiate(path)
    emu.add_fault(route="presigned.part", part_number=1, status=503, retry_after_s=2)
    refused = api.put_part(api.part_url(path, token, 1), payload(MIN_PART))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert "<Code>InternalError</Code>" in refused.text
    accepted = api.put_part(api.part_url(path, token, 1), payload(MIN_PART))
    assert accepted.status_code == 200 and "Retry-After" not in accepted.headers


def test_cut_after_bytes_on_a_part_put(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/cut.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    emu.add_fault(route="presigned.part", part_number=1, cut_after_bytes=10_000)
    data = payload(200 * KiB)
    with pytest.raises(requests.ConnectionError):
        api.put_part(url, data)
    wait_until(lambda: emu.part_bytes(path) == {1: 10_000})
    assert emu.sessions()[0]["parts"] == []  # a cut part is not stored
    logged = emu.requests("presigned.part")
    assert logged[0].dropped
    assert logged[0].fault is not None

    retry = api.put_part(url, data)
    assert retry.status_code == 200
    wait_until(lambda: emu.part_bytes(path) == {1: 10_000 + len(data)})
    assert api.complete(path, token, [(1, retry.headers["ETag"])]).status_code == 200
    assert api.get(path).content == data


def test_cut_after_more_bytes_than_the_request_body_does_not_hang(emu: FilesApiEmulator, api: Api) -> None:
    """A rule that would cut after more bytes than the client sends must not leave the client waiting."""
    path = f"{VOL}/short.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    emu.add_fault(route="presigned.part", cut_after_bytes=10_000)
    try:
        resp = api.anon.put(
            url, data=payload(5000), timeout=5, headers={"Content-Type": "application/octet-stream"}
        )
    except requests.Timeout:
        pytest.fail("the emulator waited for body bytes the client never announced (Content-Length: 5000)")
    except requests.ConnectionError:
        pass  # the connection was cut after the whole (short) body: fine
    else:
        assert resp.status_code == 200  # or the rule did not bite: fine too


def test_cut_after_at_least_the_whole_response_delivers_it(emu: FilesApiEmulator, api: Api) -> None:
    data = payload(10_000)
    api.put(f"{VOL}/f.bin", data)
    emu.add_fault(route="files.get", cut_after_bytes=len(data))
    assert api.get(f"{VOL}/f.bin").content == data


def test_cut_after_bytes_on_a_get_delivers_exactly_n_bytes(emu: FilesApiEmulator, api: Api) -> None:
    data = payload(1024 * KiB, 8)
    api.put(f"{VOL}/f.bin", data)
    cut = 100_000
    emu.add_fault(route="files.get", cut_after_bytes=cut)
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=30)
    got = bytearray()
    try:
        conn.request(
            "GET", f"/api/2.0/fs/files{quote(VOL)}/f.bin", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        try:
            while chunk := resp.read(16 * KiB):
                got += chunk
        except (ConnectionError, http.client.IncompleteRead):
            pass
    finally:
        conn.close()
    assert len(got) == cut
    assert bytes(got) == data[:cut]
    # the next request is served whole
    assert api.get(f"{VOL}/f.bin").content == data


def test_cut_after_bytes_on_a_presigned_download_breaks_a_streamed_read(
    emu: FilesApiEmulator, api: Api
) -> None:
    data = payload(512 * KiB, 5)
    path = f"{VOL}/f.bin"
    api.put(path, data)
    url = api.download_url(path).json()["url"]
    cut = 48 * KiB  # a multiple of the read size, so the client library hands over every byte it got
    emu.add_fault(route="presigned.download", cut_after_bytes=cut)
    got = bytearray()
    with (
        pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)),
        api.anon.get(url, stream=True) as resp,
    ):
        assert resp.status_code == 200
        for chunk in resp.iter_content(8 * KiB):
            got += chunk
    assert bytes(got) == data[:cut]
    wait_until(
        lambda: [(r.bytes_out, r.dropped) for r in emu.requests("presigned.download")] == [(cut, True)]
    )
    # resume where it broke, as a client would
    rest = api.anon.get(url, headers={"Range": f"bytes={len(got)}-"})
    assert bytes(got) + rest.content == data


def test_after_phase_status_on_a_part_put_stores_the_part(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/after.bin"
    token = api.initiate(path)
    data = payload(5000)
    emu.add_fault(route="presigned.part", part_number=1, status=500, phase="after")
    resp = api.put_part(api.part_url(path, token, 1), data)
    assert resp.status_code == 500
    assert "ETag" not in resp.headers
    [session] = emu.sessions()
    assert [(p["number"], p["size"]) for p in session["parts"]] == [(1, len(data))]
    # the client never learnt the ETag, so it sends the part again and completes
    again = api.put_part(api.part_url(path, token, 1), data)
    assert again.status_code == 200
    assert api.complete(path, token, [(1, again.headers["ETag"])]).status_code == 200
    assert api.get(path).content == data


def test_after_phase_cut_on_complete_still_commits_the_file(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/committed.bin"
    token = api.initiate(path)
    parts = api.upload_parts(path, token, [payload(MIN_PART, 1), payload(10, 2)])
    emu.add_fault(route="files.complete_upload", cut_after_bytes=0, phase="after")
    with pytest.raises(requests.ConnectionError):
        api.complete(path, token, parts)
    assert api.get(path).content == payload(MIN_PART, 1) + payload(10, 2)
    assert emu.sessions() == []
    # a retried complete learns that the session is gone; the file is there all the same
    assert api.complete(path, token, parts).status_code == 404


def test_after_phase_status_on_single_shot_put_writes_the_file(emu: FilesApiEmulator, api: Api) -> None:
    emu.add_fault(route="files.put", status=503, phase="after")
    assert api.put(f"{VOL}/f.bin", b"written").status_code == 503
    assert api.get(f"{VOL}/f.bin").content == b"written"


def test_before_phase_status_does_not_change_state(emu: FilesApiEmulator, api: Api) -> None:
    emu.add_fault(route="files.put", status=503)
    assert api.put(f"{VOL}/f.bin", payload(2 * 1024 * KiB)).status_code == 503
    assert api.head(f"{VOL}/f.bin").status_code == 404
    assert api.put(f"{VOL}/f.bin", b"ok").status_code == 204


def test_delay_fault_slows_the_response(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    emu.add_fault(route="files.head", delay_s=0.5)
    started = time.monotonic()
    resp = api.head(f"{VOL}/f.bin")
    assert time.monotonic() - started >= 0.5
    assert resp.status_code == 200


def test_expire_fault_on_a_fresh_part_url(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    url = api.part_url(path, token, 1)
    emu.add_fault(route="presigned.part", expire=True)
    resp = api.put_part(url, b"data")
    assert resp.status_code == 403
    assert "<Code>AccessDenied</Code>" in resp.text
    assert "Request has expired" in resp.text
    assert emu.sessions()[0]["parts"] == []
    assert api.put_part(url, b"data").status_code == 200


# ================================================================ control plane over HTTP


def test_control_health_state_and_requests(api: Api) -> None:
    assert api.control("GET", "health").json() == {"ok": True}
    api.put(f"{VOL}/f.bin", b"12345")
    state = api.control("GET", "state").json()
    assert [(f["path"], f["size"]) for f in state["files"]] == [(f"{VOL}/f.bin", 5)]
    assert state["settings"]["tokens"] == 1  # a count, never the secrets
    assert TOKEN not in json.dumps(state)

    def logged() -> list[Any]:
        entries: list[Any] = api.control("GET", "requests").json()["requests"]
        return entries

    wait_until(lambda: [e["route"] for e in logged()] == ["files.put"])
    entry = logged()[0]
    assert (entry["method"], entry["path"], entry["status"], entry["bytes_in"]) == (
        "PUT",
        f"{VOL}/f.bin",
        204,
        5,
    )
    assert api.control("GET", "nope").status_code == 404


def test_control_faults_add_list_and_delete(api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    added = api.control(
        "POST", "faults", {"route": "files.get", "status": 503, "retry_after_s": 2, "times": None}
    )
    assert added.status_code == 200
    [rule_id] = added.json()["ids"]
    listed = api.control("GET", "faults").json()["faults"]
    assert [(f["id"], f["route"], f["status"]) for f in listed] == [(rule_id, "files.get", 503)]

    failed = api.get(f"{VOL}/f.bin")
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "2"
    assert api.control("GET", "faults").json()["faults"][0]["fired"] == 1

    assert api.control("DELETE", f"faults/{rule_id}").status_code == 200
    assert api.control("DELETE", f"faults/{rule_id}").status_code == 404
    assert api.get(f"{VOL}/f.bin").status_code == 200

    many = api.control(
        "POST",
        "faults",
        {"faults": [{"route": "files.head", "status": 500}, {"route": "files.get", "status": 429}]},
    )
    assert len(many.json()["ids"]) == 2
    assert api.control("DELETE", "faults").status_code == 200
    assert api.control("GET", "faults").json()["faults"] == []
    assert api.get(f"{VOL}/f.bin").status_code == 200


def test_control_rejects_a_batch_with_a_bad_rule_as_a_whole(api: Api) -> None:
    """A 400 means nothing was armed: the caller never learnt the ids of any rule of the batch."""
    resp = api.control("POST", "faults", {"faults": [{"route": "files.get", "status": 500}, {"route": "x"}]})
    assert resp.status_code == 400
    assert api.control("GET", "faults").json()["faults"] == []


@pytest.mark.parametrize(
    "rule", [{"route": "files.get", "stauts": 500}, {"route": "files.get"}, {"status": 1000}]
)
def test_control_rejects_bad_fault_rules(api: Api, rule: dict[str, Any]) -> None:
    resp = api.control("POST", "faults", rule)
    assert resp.status_code == 400
    assert api.control("GET", "faults").json()["faults"] == []


def test_control_stats_count_bytes_by_part(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/stats.bin"
    token = api.initiate(path)
    api.upload_parts(path, token, [payload(MIN_PART), payload(333)])

    def stats() -> dict[str, Any]:
        body: dict[str, Any] = api.control("GET", "stats").json()
        return body

    wait_until(lambda: stats()["requests_by_route"].get("presigned.part") == 2)
    body = stats()
    assert body["bytes_in_by_part"] == {path: {"1": MIN_PART, "2": 333}}
    assert body["bytes_in_by_path"][path] >= MIN_PART + 333  # also counts the JSON bodies naming the path
    assert emu.part_bytes(path) == {1: MIN_PART, 2: 333}


def test_control_reset_clears_files_faults_and_log(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f.bin", b"data")
    api.initiate(f"{VOL}/g.bin")
    emu.add_fault(route="files.get", status=500, times=None)
    assert api.control("POST", "reset").status_code == 200
    state = api.control("GET", "state").json()
    assert state["files"] == []
    assert state["sessions"] == []
    assert state["faults"] == []
    assert api.control("GET", "requests").json()["requests"] == []
    assert not emu.local_path(f"{VOL}/f.bin").exists()
    resp = api.get(f"{VOL}/f.bin")
    assert resp.status_code == 404  # not the 500 fault: faults are gone
    assert api.uc("GET", "catalogs/main").status_code == 200  # default catalog is back


def test_control_seed_creates_a_volume_and_a_file(emu: FilesApiEmulator, api: Api) -> None:
    spec = {
        "volumes": ["seeded.sch.vol"],
        "files": [
            {"path": "/Volumes/seeded/sch/vol/dir/a.bin", "size": 123_457, "seed": 7},
            {"path": f"{VOL}/b.txt", "content_b64": base64.b64encode(b"exact bytes").decode()},
        ],
    }
    resp = api.control("POST", "seed", spec)
    assert resp.status_code == 200
    created = {f["path"]: f for f in resp.json()["files"]}
    assert created["/Volumes/seeded/sch/vol/dir/a.bin"]["size"] == 123_457
    assert api.uc("GET", "volumes/seeded.sch.vol").status_code == 200
    a = api.get("/Volumes/seeded/sch/vol/dir/a.bin")
    assert len(a.content) == 123_457
    # the seed reports the object's (storage) ETag, which presigned GETs carry
    a_url = api.download_url("/Volumes/seeded/sch/vol/dir/a.bin").json()["url"]
    first_byte = api.anon.get(a_url, headers={"Range": "bytes=0-0"})
    assert first_byte.headers["ETag"] == created["/Volumes/seeded/sch/vol/dir/a.bin"]["etag"]
    assert api.get(f"{VOL}/b.txt").content == b"exact bytes"
    # the same seed gives the same bytes
    api.control("POST", "seed", {"files": [{"path": f"{VOL}/again.bin", "size": 123_457, "seed": 7}]})
    assert hashlib.sha256(api.get(f"{VOL}/again.bin").content).digest() == hashlib.sha256(a.content).digest()


def test_control_seed_rejects_bad_specs(api: Api) -> None:
    assert api.control("POST", "seed", {"volumes": ["only.two"]}).status_code == 400
    assert api.control("POST", "seed", {"files": [{"path": "/tmp/x", "size": 1}]}).status_code == 400


def test_control_settings_patch(emu: FilesApiEmulator, api: Api) -> None:
    assert api.control("GET", "settings").json()["cloud"] == "AWS"
    patched = api.control("PATCH", "settings", {"cloud": "GCP", "min_part_size_bytes": 1})
    assert patched.status_code == 200
    assert patched.json()["cloud"] == "GCP"
    assert emu.server.settings.min_part_size_bytes == 1

    for bad in ({"no_such_setting": 1}, {"cloud": "IBM"}, {"cloud": "AZURE", "typo": True}):
        resp = api.control("PATCH", "settings", bad)
        assert resp.status_code == 400
    assert api.control("GET", "settings").json()["cloud"] == "GCP"  # failed patches change nothing


# ================================================================ the request log


def test_request_log_has_the_entry_once_the_response_arrived(emu: FilesApiEmulator, api: Api) -> None:
    """Tests assert on emu.requests() right after a call; the entry must already be there."""
    api.put(f"{VOL}/f.bin", b"x")
    missing = 0
    for _ in range(200):
        before = len(emu.requests())
        assert api.head(f"{VOL}/f.bin").status_code == 200
        if len(emu.requests()) != before + 1:
            missing += 1
    assert missing == 0, f"{missing} of 200 responses arrived before their request was logged"


# ---------------------------------------------------------------- part layout on the server's disk


def _session_dir(emu: FilesApiEmulator) -> Path:
    [folder] = [p for p in (emu.root / ".emulator" / "uploads").iterdir() if p.is_dir()]
    return folder


def test_uniform_parts_in_any_order_complete_without_a_copy(api: Api, emu: FilesApiEmulator) -> None:
    path = f"{VOL}/layout/uniform.bin"
    data = payload(4 * MIN_PART + 123, seed=11)
    chunks = [data[i : i + MIN_PART] for i in range(0, len(data), MIN_PART)]
    token = api.initiate(path)
    order = [1, 4, 2, 5, 3]  # part 1 first (as the SDK sends it), the rest out of order
    etags = {}
    for n in order:
        resp = api.put_part(api.part_url(path, token, n), chunks[n - 1])
        assert resp.status_code == 200
        etags[n] = resp.headers["ETag"]
    staged = (_session_dir(emu) / "parts.data").stat().st_ino
    assert api.complete(path, token, sorted(etags.items())).status_code == 200
    assert api.get(path).content == data
    assert emu.local_path(path).stat().st_ino == staged  # renamed into place, not copied


def test_irregular_parts_are_joined_by_copy(api: Api, emu: FilesApiEmulator) -> None:
    path = f"{VOL}/layout/irregular.bin"
    token = api.initiate(path)
    last = payload(1000, seed=1)
    big = [payload(MIN_PART, seed=2), payload(MIN_PART, seed=3)]
    # the short last part arrives first and sets the slot size; the larger ones get files of their own
    e3 = api.put_part(api.part_url(path, token, 3), last).headers["ETag"]
    e1 = api.put_part(api.part_url(path, token, 1), big[0]).headers["ETag"]
    e2 = api.put_part(api.part_url(path, token, 2), big[1]).headers["ETag"]
    assert api.complete(path, token, [(1, e1), (2, e2), (3, e3)]).status_code == 200
    assert api.get(path).content == big[0] + big[1] + last


def test_gaps_in_part_numbers_are_joined_in_order(api: Api) -> None:
    path = f"{VOL}/layout/gaps.bin"
    token = api.initiate(path)
    a, b = payload(MIN_PART, seed=4), payload(77, seed=5)
    e1 = api.put_part(api.part_url(path, token, 1), a).headers["ETag"]
    e3 = api.put_part(api.part_url(path, token, 3), b).headers["ETag"]
    assert api.complete(path, token, [(1, e1), (3, e3)]).status_code == 200
    assert api.get(path).content == a + b


def test_resending_a_stored_part_never_corrupts_it(api: Api, emu: FilesApiEmulator) -> None:
    """A re-send that breaks mid-body must not damage the copy the server already acknowledged."""
    path = f"{VOL}/layout/resend.bin"
    token = api.initiate(path)
    chunks = [payload(MIN_PART, seed=6), payload(MIN_PART // 2, seed=7)]
    etags = dict(api.upload_parts(path, token, chunks))
    emu.add_fault(route="presigned.part", part_number=1, cut_after_bytes=MIN_PART // 3)
    with pytest.raises(requests.exceptions.ConnectionError):
        api.put_part(api.part_url(path, token, 1), payload(MIN_PART, seed=99))
    assert api.complete(path, token, sorted(etags.items())).status_code == 200
    assert api.get(path).content == chunks[0] + chunks[1]


def test_a_replaced_part_gets_a_new_etag(api: Api) -> None:
    path = f"{VOL}/layout/replace.bin"
    token = api.initiate(path)
    first = api.put_part(api.part_url(path, token, 1), payload(MIN_PART, seed=8)).headers["ETag"]
    second = api.put_part(api.part_url(path, token, 1), payload(MIN_PART, seed=9)).headers["ETag"]
    assert first != second
    assert api.complete(path, token, [(1, first)]).status_code == 400  # only the last upload counts
    assert api.complete(path, token, [(1, second)]).status_code == 200
    assert api.get(path).content == payload(MIN_PART, seed=9)


def test_discard_mode_is_a_sink_that_keeps_sizes(api: Api, emu: FilesApiEmulator) -> None:
    """The benchmark sink: bodies are read (and counted) but not stored; the file has the right size."""
    emu.update_settings(discard_part_bodies=True)
    path = f"{VOL}/layout/discard.bin"
    token = api.initiate(path)
    etags = api.upload_parts(path, token, [payload(MIN_PART, seed=1), payload(100, seed=2)])
    assert api.complete(path, token, etags).status_code == 200
    assert emu.local_path(path).stat().st_size == MIN_PART + 100
    assert api.get(path).content == b"\0" * (MIN_PART + 100)
    assert sum(emu.part_bytes(path).values()) == MIN_PART + 100
