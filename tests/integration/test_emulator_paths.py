"""expire_time, the server's clock, storage-proxy part PUTs and path validation, on the wire.

Plain HTTP against the emulator (issue #8 item 7): what the strict defaults refuse, and what the
``clock_offset_s`` and ``expire_time_strict`` settings change.
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.protocol_api import (
    BASE_SETTINGS,
    OMIT,
    VOL,
    Api,
    error_code,
    expire_in,
    payload,
    raw_request,
    serve_storage_proxy,
)

pytestmark = pytest.mark.integration

HOUR = 3600


def abort_url_resp(api: Api, path: str, token: str, expire_time: str) -> Any:
    body: dict[str, Any] = {"path": path, "session_token": token}
    if expire_time != OMIT:
        body["expire_time"] = expire_time
    return api.http.post(f"{api.base}/api/2.0/fs/create-abort-upload-url", json=body)


def assert_invalid(resp: Any, fragment: str) -> None:
    assert resp.status_code == 400, resp.text
    assert error_code(resp) == "INVALID_PARAMETER_VALUE"
    assert fragment in resp.json()["message"]


# ================================================================ expire_time

BAD_EXPIRE_TIMES = [
    pytest.param(OMIT, "required", id="missing"),
    pytest.param("tomorrow", "YYYY-MM-DDTHH:MM:SSZ", id="not-a-time"),
    pytest.param(expire_in(HOUR).rstrip("Z"), "YYYY-MM-DDTHH:MM:SSZ", id="no-zone"),
    pytest.param(expire_in(HOUR).replace("Z", "+00:00"), "YYYY-MM-DDTHH:MM:SSZ", id="offset-not-Z"),
    pytest.param(expire_in(HOUR).replace("Z", ".500Z"), "YYYY-MM-DDTHH:MM:SSZ", id="fractional"),
    pytest.param("2031-13-01T00:00:00Z", "not an RFC 3339", id="month-13"),
    pytest.param("2020-01-01T00:00:00Z", "not in the future", id="past"),
]


@pytest.mark.parametrize(("expire_time", "fragment"), BAD_EXPIRE_TIMES)
def test_create_upload_part_urls_refuses_a_bad_expire_time(api: Api, expire_time: str, fragment: str) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    assert_invalid(api.part_urls_resp(path, token, 1, 1, expire_time=expire_time), fragment)


@pytest.mark.parametrize(("expire_time", "fragment"), BAD_EXPIRE_TIMES)
def test_create_download_url_refuses_a_bad_expire_time(api: Api, expire_time: str, fragment: str) -> None:
    path = f"{VOL}/f.bin"
    assert api.put(path, b"data").status_code == 204
    assert_invalid(api.download_url(path, expire_time=expire_time), fragment)


@pytest.mark.parametrize(("expire_time", "fragment"), BAD_EXPIRE_TIMES)
def test_create_abort_upload_url_refuses_a_bad_expire_time(api: Api, expire_time: str, fragment: str) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    assert_invalid(abort_url_resp(api, path, token, expire_time), fragment)


def test_non_string_expire_time_is_400(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    body = {"path": path, "session_token": token, "start_part_number": 1, "count": 1, "expire_time": 1}
    resp = api.http.post(f"{api.base}/api/2.0/fs/create-upload-part-urls", json=body)
    assert_invalid(resp, "expire_time")


def test_lenient_expire_time_reading_defaults_a_missing_one_and_mints_dead_urls(
    emu: FilesApiEmulator, api: Api
) -> None:
    """The other reading of the unverified behaviour, on request: missing = 1 h, past = born expired."""
    emu.update_settings(expire_time_strict=False)
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    missing = api.part_urls(path, token, 1, 1, expire_time=OMIT)[0]["url"]
    assert api.put_part(missing, b"data").status_code == 200
    offset = api.part_urls(path, token, 2, 1, expire_time=expire_in(HOUR).replace("Z", "+00:00"))
    assert api.put_part(offset[0]["url"], b"data").status_code == 200
    past = api.part_urls(path, token, 1, 1, expire_time="2020-01-01T00:00:00Z")[0]["url"]
    dead = api.put_part(past, b"data")
    assert dead.status_code == 403
    assert "Request has expired" in dead.text


def test_a_good_expire_time_on_each_call_is_accepted(api: Api) -> None:
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    assert api.part_urls_resp(path, token, 1, 1, expire_time=expire_in(HOUR)).status_code == 200
    assert abort_url_resp(api, path, token, expire_in(HOUR)).status_code == 200
    assert api.put(f"{VOL}/g.bin", b"data").status_code == 204
    assert api.download_url(f"{VOL}/g.bin", expire_time=expire_in(HOUR)).status_code == 200


# ================================================================ the server's clock


def test_expire_time_is_judged_on_the_server_clock(emu: FilesApiEmulator, api: Api) -> None:
    """A client whose clock is 2 h behind the server asks for "now + 1 h": already past there."""
    path = f"{VOL}/f.bin"
    token = api.initiate(path)
    emu.update_settings(clock_offset_s=2 * HOUR)
    assert_invalid(api.part_urls_resp(path, token, 1, 1, expire_time=expire_in(HOUR)), "not in the future")
    assert api.part_urls_resp(path, token, 1, 1, expire_time=expire_in(3 * HOUR)).status_code == 200
    emu.update_settings(clock_offset_s=-2 * HOUR)  # a client ahead: its "now + 1 h" is 3 h away there
    url = api.part_urls(path, token, 1, 1, expire_time=expire_in(HOUR))[0]["url"]
    assert api.put_part(url, b"data").status_code == 200


def test_a_presigned_url_expires_when_the_server_clock_passes_it(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/f.bin"
    assert api.put(path, b"data").status_code == 204
    url = api.download_url(path, expire_time=expire_in(HOUR)).json()["url"]
    assert api.anon.get(url).content == b"data"
    emu.update_settings(clock_offset_s=HOUR + 5)
    expired = api.anon.get(url)
    assert expired.status_code == 403
    assert "Request has expired" in expired.text


def test_date_header_follows_the_server_clock(emu: FilesApiEmulator, api: Api) -> None:
    offset = -5 * HOUR
    emu.update_settings(clock_offset_s=offset)
    before = time.time()
    resp = api.http.head(api.dirs_url(VOL))
    after = time.time()
    date = email.utils.parsedate_to_datetime(resp.headers["Date"]).timestamp()
    # Date has whole seconds: it lies between the send and receipt instants, moved by the offset
    assert math.floor(before + offset) <= date <= after + offset


def test_last_modified_and_listings_follow_the_server_clock(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/d/f.bin"
    assert api.put(path, b"data").status_code == 204
    plain_head = api.head(path).headers["Last-Modified"]
    plain_entry = api.list_page(f"{VOL}/d").json()["contents"][0]["last_modified"]

    emu.update_settings(clock_offset_s=7 * HOUR)
    head = api.head(path)
    shifted = email.utils.parsedate_to_datetime(head.headers["Last-Modified"]).timestamp()
    assert shifted - email.utils.parsedate_to_datetime(plain_head).timestamp() == 7 * HOUR
    assert api.list_page(f"{VOL}/d").json()["contents"][0]["last_modified"] - plain_entry == 7 * HOUR * 1000
    # the validator it hands out still works against itself
    same = api.get(path, headers={"If-Unmodified-Since": head.headers["Last-Modified"]})
    assert same.status_code == 200
    # and the plain-clock stamp is now older than the file: a change, as seen from the server
    stale = api.get(path, headers={"If-Unmodified-Since": plain_head})
    assert stale.status_code == 412


def test_clock_offset_must_be_whole_seconds(emu: FilesApiEmulator, api: Api) -> None:
    resp = api.control("PATCH", "settings", {"clock_offset_s": 1.5})
    assert resp.status_code == 400
    assert api.control("PATCH", "settings", {"clock_offset_s": -30}).json()["clock_offset_s"] == -30


# ================================================================ storage-proxy part PUTs


def proxy_put(api: Api, path: str, token: str, number: int = 1, data: bytes = b"part") -> Any:
    return api.http.put(
        api.files_url(path),
        params={"session_token": token, "upload_type": "multipart", "part_number": str(number)},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def endpoint(host: str, *, api: str = "FILES_API", version: str | None = "2.0", multipart: Any = True) -> Any:
    return {
        "api": api,
        "api_version": version,
        "scheme": "http",
        "hostname": host,
        "multipart_upload_supported": multipart,
    }


@pytest.mark.parametrize(
    "endpoints",
    [
        pytest.param(None, id="no-endpoints-api"),
        pytest.param([], id="empty-list"),
        pytest.param([endpoint("{here}", api="IO_OFFLOAD", version=None)], id="io-offload-only"),
        pytest.param([endpoint("{here}", multipart=False)], id="files-api-without-multipart"),
        pytest.param([endpoint("{here}", multipart="true")], id="multipart-not-literally-true"),
        pytest.param([endpoint("{here}", version="3.0")], id="files-api-3.0"),
        pytest.param([endpoint("storage-proxy.example:8443")], id="on-another-host"),
    ],
)
def test_storage_proxy_part_put_is_refused_unless_advertised_on_this_host(
    emu: FilesApiEmulator, api: Api, endpoints: Any
) -> None:
    here = f"127.0.0.1:{emu.port}"
    if endpoints is not None:
        endpoints = [
            {k: (v.format(here=here) if k == "hostname" else v) for k, v in e.items()} for e in endpoints
        ]
    emu.update_settings(endpoints=endpoints)
    path = f"{VOL}/proxy.bin"
    token = api.initiate(path)
    resp = proxy_put(api, path, token)
    assert_invalid(resp, "not supported on this host")
    assert emu.sessions()[0]["parts"] == []  # no byte stored
    assert api.head(path).status_code == 404  # nor written as the file


def test_storage_proxy_part_put_is_served_where_advertised(emu: FilesApiEmulator, api: Api) -> None:
    serve_storage_proxy(emu)
    path = f"{VOL}/proxy.bin"
    token = api.initiate(path)
    resp = proxy_put(api, path, token)
    assert resp.status_code == 200
    assert api.complete(path, token, [(1, resp.headers["ETag"])]).status_code == 200
    assert api.get(path).content == b"part"


# ================================================================ paths


def files_target(path_tail: str) -> str:
    """A raw request target for a file in the test volume; ``path_tail`` is sent exactly as written."""
    return f"/api/2.0/fs/files{VOL}/{path_tail}"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {BASE_SETTINGS['tokens'][0]}"}


@pytest.mark.parametrize("method", ["PUT", "GET", "HEAD", "DELETE"])
def test_trailing_slash_on_a_file_path_is_400(emu: FilesApiEmulator, api: Api, method: str) -> None:
    assert api.put(f"{VOL}/f.bin", b"data").status_code == 204
    status, _, body = raw_request(
        emu, method, files_target("f.bin/"), auth(), b"x" if method == "PUT" else b""
    )
    assert status == 400
    if method != "HEAD":
        assert b"may not end with '/'" in body
    assert api.get(f"{VOL}/f.bin").content == b"data"  # untouched


def test_trailing_slash_on_a_file_path_is_400_for_upload_actions(emu: FilesApiEmulator) -> None:
    target = files_target("f.bin/") + "?action=initiate-upload"
    status, _, body = raw_request(emu, "POST", target, auth())
    assert status == 400
    assert b"may not end with '/'" in body
    assert emu.sessions() == []


def test_directories_keep_accepting_a_trailing_slash(emu: FilesApiEmulator, api: Api) -> None:
    assert api.mkdir(f"{VOL}/d/").status_code in (200, 204)
    assert api.http.head(api.dirs_url(f"{VOL}/d/")).status_code == 200
    assert api.list_page(f"{VOL}/d/").status_code == 200
    assert api.http.delete(api.dirs_url(f"{VOL}/d/")).status_code in (200, 204)


@pytest.mark.parametrize("encoded", ["a%2Fb.bin", "a%2fb.bin"])
def test_encoded_slash_in_a_name_is_400_not_a_separator(
    emu: FilesApiEmulator, api: Api, encoded: str
) -> None:
    status, _, body = raw_request(emu, "PUT", files_target(encoded), auth(), b"data")
    assert status == 400
    assert b"%2F" in body
    assert api.head(f"{VOL}/a/b.bin").status_code == 404
    status, _, _ = raw_request(emu, "PUT", f"/api/2.0/fs/directories{VOL}/{encoded}", auth())
    assert status == 400
    assert api.http.head(api.dirs_url(f"{VOL}/a")).status_code == 404


def test_a_literal_percent_sequence_in_a_name_is_just_a_name(api: Api) -> None:
    """Encoded properly (``%252F``), a name containing the text "%2F" is fine."""
    assert api.put(f"{VOL}/a%2Fb.bin", b"data").status_code == 204
    assert api.get(f"{VOL}/a%2Fb.bin").content == b"data"


@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_invalid_utf8_after_decoding_is_400_not_an_alias(
    emu: FilesApiEmulator, api: Api, method: str
) -> None:
    # a file whose name is U+FFFD: what a lossy decoder would turn %FF into
    assert api.put(f"{VOL}/\ufffd.bin", b"replacement char").status_code == 204
    status, _, body = raw_request(
        emu, method, files_target("%FF.bin"), auth(), b"x" if method == "PUT" else b""
    )
    assert status == 400
    assert b"UTF-8" in body
    assert api.get(f"{VOL}/\ufffd.bin").content == b"replacement char"


def test_invalid_utf8_in_a_download_url_path_is_400(emu: FilesApiEmulator, api: Api) -> None:
    assert api.put(f"{VOL}/\ufffd.bin", b"replacement char").status_code == 204
    target = f"/api/2.0/fs/create-download-url?path={VOL}/%FF.bin&expire_time={expire_in(HOUR)}"
    status, _, body = raw_request(emu, "POST", target, auth())
    assert status == 400
    assert b"UTF-8" in body


def test_valid_utf8_names_round_trip(api: Api) -> None:
    path = f"{VOL}/d\u00e9j\u00e0 vu/\u6587\u4ef6 #1?.bin"
    assert api.put(path, b"data").status_code == 204
    assert api.get(path).content == b"data"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("n" * 255, True, id="255-ascii"),
        pytest.param("n" * 256, False, id="256-ascii"),
        pytest.param("n" * 300, False, id="300-ascii"),
        pytest.param("\u00e9" * 127, True, id="254-bytes-of-e-acute"),
        pytest.param("\u00e9" * 128, False, id="256-bytes-of-e-acute"),
    ],
)
def test_name_length_limit_is_255_utf8_bytes(api: Api, name: str, ok: bool) -> None:
    path = f"{VOL}/{name}"
    resp = api.put(path, payload(10))
    if ok:
        assert resp.status_code == 204
        assert api.get(path).content == payload(10)
        return
    assert_invalid(resp, "at most 255 bytes")
    assert_invalid(api.get(path), "at most 255 bytes")
    assert api.head(path).status_code == 400
    assert_invalid(api.mkdir(path), "at most 255 bytes")
    assert_invalid(api.action(path, "initiate-upload"), "at most 255 bytes")
    assert_invalid(api.download_url(path), "at most 255 bytes")


def test_whole_path_limit_is_4096_bytes(api: Api) -> None:
    deep = "/".join(["d" * 250] * 17)  # 17 * 251 bytes: over 4096 with every name within 255
    resp = api.put(f"{VOL}/{deep}/f.bin", b"x")
    assert_invalid(resp, "longer than 4096 bytes")
    assert_invalid(api.mkdir(f"{VOL}/{deep}"), "longer than 4096 bytes")
