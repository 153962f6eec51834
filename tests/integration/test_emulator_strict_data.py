"""The emulator's strict data plane on the wire: body lengths and size caps, presigned URL bindings per
cloud, and each cloud's answer to a part upload (issue #8, items 1 to 3).

Raw HTTP only (requests, or a plain socket where a client library would add headers on its own).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.protocol_api import (
    MIN_PART,
    TOKEN,
    VOL,
    Api,
    KiB,
    error_code,
    expire_in,
    payload,
    serve_storage_proxy,
    wait_until,
)
from tests.integration.test_emulator_standalone import wait_for_port

pytestmark = pytest.mark.integration

CLOUDS = ["AWS", "AZURE", "GCP"]
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest, emu: FilesApiEmulator) -> str:
    emu.update_settings(cloud=request.param)
    return str(request.param)


def chunks_of(data: bytes, size: int = 16 * KiB) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def raw_exchange(emu: FilesApiEmulator, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send exactly these header lines (no library adds Content-Length) and read the one answer."""
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def xml_code(text: str) -> str:
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def part_url(api: Api, path: str) -> tuple[str, str, dict[str, Any]]:
    token = api.initiate(path)
    entry = api.part_urls(path, token, 1, 1)[0]
    return token, entry["url"], entry


def stored_parts(emu: FilesApiEmulator, path: str) -> list[int]:
    """Part numbers the server holds for the open session(s) of ``path`` (not bytes merely received)."""
    return [p["number"] for s in emu.sessions() if s["path"] == path for p in s["parts"]]


def last_logged(emu: FilesApiEmulator, route: str) -> Any:
    wait_until(lambda: bool(emu.requests(route)))
    return emu.requests(route)[-1]


# ================================================================ item 1: lengths and caps


def test_presigned_part_without_content_length_is_411_in_the_clouds_xml(
    emu: FilesApiEmulator, api: Api, cloud: str
) -> None:
    path = f"{VOL}/nolen.bin"
    _, url, _ = part_url(api, path)
    resp = api.anon.put(url, data=chunks_of(payload(64 * KiB)), headers=OCTET)
    assert resp.status_code == 411
    assert resp.headers["Content-Type"] == "application/xml"
    assert xml_code(resp.text) == (
        "MissingContentLengthHeader" if cloud == "AZURE" else "MissingContentLength"
    )
    assert stored_parts(emu, path) == []


def test_presigned_part_with_neither_length_header_is_411(emu: FilesApiEmulator, api: Api) -> None:
    path = f"{VOL}/neither.bin"
    _, url, _ = part_url(api, path)
    status, _, body = raw_exchange(
        emu, f"PUT {target(url)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    )
    assert status == 411 and xml_code(body.decode()) == "MissingContentLength"
    assert stored_parts(emu, path) == []


def test_presigned_resumable_chunk_without_content_length_is_411(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable", cloud="GCP")
    path = f"{VOL}/resumable.bin"
    token = api.action(path, "initiate-upload").json()["resumable_upload"]["session_token"]
    url = api.http.post(
        f"{api.base}/api/2.0/fs/create-resumable-upload-url", json={"path": path, "session_token": token}
    ).json()["resumable_upload_url"]["url"]
    data = payload(32 * KiB)
    resp = api.anon.put(
        url, data=chunks_of(data), headers={**OCTET, "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
    )
    assert resp.status_code == 411 and xml_code(resp.text) == "MissingContentLength"
    assert api.head(path).status_code == 404


@pytest.mark.parametrize("how", ["chunked", "neither"])
def test_single_shot_put_without_a_length_is_411_json_by_default(
    emu: FilesApiEmulator, api: Api, how: str
) -> None:
    path = f"{VOL}/single.bin"
    if how == "chunked":
        resp = api.http.put(api.files_url(path), data=chunks_of(payload(40 * KiB)), headers=OCTET)
        status, body = resp.status_code, resp.json()
    else:
        status, _, raw = raw_exchange(
            emu,
            f"PUT /api/2.0/fs/files{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n",
        )
        body = json.loads(raw)
    assert status == 411
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert api.head(path).status_code == 404  # nothing stored, not even an empty file


def test_single_shot_chunked_body_is_stored_when_the_kinder_reading_is_chosen(
    emu: FilesApiEmulator, api: Api
) -> None:
    emu.update_settings(workspace_put_requires_length=False)
    data = payload(40 * KiB, 3)
    resp = api.http.put(api.files_url(f"{VOL}/kind.bin"), data=chunks_of(data), headers=OCTET)
    assert resp.status_code == 204
    assert api.get(f"{VOL}/kind.bin").content == data


def test_single_shot_cap_holds_on_bytes_received_not_only_on_the_declared_length(
    emu: FilesApiEmulator, api: Api
) -> None:
    """A chunked body declares nothing: the server stops reading at the cap, answers 413 and closes."""
    cap = 64 * KiB
    emu.update_settings(workspace_put_requires_length=False, single_shot_max_bytes=cap)
    path = f"{VOL}/toolarge.bin"
    resp = api.http.put(api.files_url(path), data=chunks_of(payload(512 * KiB)), headers=OCTET)
    assert resp.status_code == 413
    assert resp.headers.get("Connection") == "close"
    assert error_code(resp) == "INVALID_PARAMETER_VALUE"
    assert api.head(path).status_code == 404
    logged = last_logged(emu, "files.put")
    assert logged.status == 413 and logged.bytes_in <= cap


def test_single_shot_declared_over_the_cap_is_413_with_a_code_no_client_retries(
    emu: FilesApiEmulator, api: Api
) -> None:
    """RESOURCE_EXHAUSTED maps to databricks-sdk's ResourceExhausted, a TooManyRequests (a throttle)."""
    emu.update_settings(single_shot_max_bytes=10 * KiB)
    resp = api.put(f"{VOL}/big.bin", payload(20 * KiB))
    assert resp.status_code == 413
    assert error_code(resp) not in ("RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED", "TEMPORARILY_UNAVAILABLE")
    assert error_code(resp) == "INVALID_PARAMETER_VALUE"
    assert "Retry-After" not in resp.headers


def test_presigned_part_over_the_part_cap_is_the_clouds_too_large_error(
    emu: FilesApiEmulator, api: Api, cloud: str
) -> None:
    emu.update_settings(min_part_size_bytes=0, max_part_size_bytes=32 * KiB)
    path = f"{VOL}/bigpart.bin"
    _, url, _ = part_url(api, path)
    resp = api.put_part(url, payload(48 * KiB))
    if cloud == "AZURE":
        assert (resp.status_code, xml_code(resp.text)) == (413, "RequestBodyTooLarge")
    else:
        assert (resp.status_code, xml_code(resp.text)) == (400, "EntityTooLarge")
    assert resp.headers.get("Connection") == "close"
    assert stored_parts(emu, path) == []


def test_storage_proxy_chunked_part_is_capped_on_bytes_received(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(
        workspace_put_requires_length=False, min_part_size_bytes=0, max_part_size_bytes=32 * KiB
    )
    serve_storage_proxy(emu)
    path = f"{VOL}/proxy.bin"
    token = api.initiate(path)
    params = {"session_token": token, "upload_type": "multipart", "part_number": "1"}
    resp = api.http.put(api.files_url(path), params=params, data=chunks_of(payload(256 * KiB)), headers=OCTET)
    assert resp.status_code == 400 and resp.headers.get("Connection") == "close"
    assert stored_parts(emu, path) == []
    assert last_logged(emu, "files.proxy_multipart").bytes_in <= 32 * KiB


def test_storage_proxy_part_without_a_length_is_411_by_default(emu: FilesApiEmulator, api: Api) -> None:
    serve_storage_proxy(emu)
    path = f"{VOL}/proxy411.bin"
    token = api.initiate(path)
    params = {"session_token": token, "upload_type": "multipart", "part_number": "1"}
    resp = api.http.put(api.files_url(path), params=params, data=chunks_of(payload(8 * KiB)), headers=OCTET)
    assert resp.status_code == 411 and error_code(resp) == "INVALID_PARAMETER_VALUE"


# ================================================================ item 2: presigned URL bindings


@pytest.mark.parametrize("cloud_name", ["AWS", "GCP"])
def test_s3_and_gcs_urls_bind_the_method(emu: FilesApiEmulator, api: Api, cloud_name: str) -> None:
    emu.update_settings(cloud=cloud_name)
    data = payload(3000)
    api.put(f"{VOL}/f.bin", data)
    url = api.download_url(f"{VOL}/f.bin").json()["url"]
    assert api.anon.get(url).content == data
    head = api.anon.head(url)  # a HEAD is not the GET the URL was signed for
    assert head.status_code == 403 and head.content == b""
    for method in ("PUT", "DELETE"):
        resp = api.anon.request(method, url, data=b"" if method == "PUT" else None)
        assert resp.status_code == 403 and xml_code(resp.text) == "SignatureDoesNotMatch", method
        assert resp.headers["Content-Type"] == "application/xml"
    _, purl, _ = part_url(api, f"{VOL}/p.bin")
    for method in ("GET", "POST", "DELETE"):
        resp = api.anon.request(method, purl)
        assert resp.status_code == 403 and xml_code(resp.text) == "SignatureDoesNotMatch", method


@pytest.mark.parametrize("cloud_name", ["AWS", "GCP"])
@pytest.mark.parametrize(
    "headers", [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/octet-stream; x=1"}]
)
def test_s3_and_gcs_part_urls_bind_the_signed_headers(
    emu: FilesApiEmulator, api: Api, cloud_name: str, headers: dict[str, str]
) -> None:
    emu.update_settings(cloud=cloud_name)
    path = f"{VOL}/hdr.bin"
    _, url, entry = part_url(api, path)
    assert entry["headers"] == [{"name": "Content-Type", "value": "application/octet-stream"}]
    # requests adds no Content-Type of its own to a bytes body, so {} really sends none
    resp = api.anon.put(url, data=payload(1000), headers=headers)
    assert resp.status_code == 403 and xml_code(resp.text) == "SignatureDoesNotMatch"
    assert stored_parts(emu, path) == []
    ok = api.anon.put(url, data=payload(1000), headers={h["name"]: h["value"] for h in entry["headers"]})
    assert ok.status_code == 200


def test_configured_part_headers_are_handed_out_and_signed(emu: FilesApiEmulator, api: Api) -> None:
    pairs = [("content-type", "binary/octet-stream"), ("x-amz-server-side-encryption", "AES256")]
    emu.update_settings(presigned_part_headers=pairs)
    path = f"{VOL}/sse.bin"
    _, url, entry = part_url(api, path)
    assert entry["headers"] == [{"name": n, "value": v} for n, v in pairs]
    without_sse = api.anon.put(url, data=payload(100), headers={"Content-Type": "binary/octet-stream"})
    assert without_sse.status_code == 403 and xml_code(without_sse.text) == "SignatureDoesNotMatch"
    assert api.anon.put(url, data=payload(100), headers=dict(pairs)).status_code == 200


def test_azure_sas_grants_permissions_not_one_method(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(cloud="AZURE")
    data = payload(3000)
    api.put(f"{VOL}/f.bin", data)
    url = api.download_url(f"{VOL}/f.bin").json()["url"]
    assert api.anon.get(url).content == data
    head = api.anon.head(url)  # read permission covers Get Blob Properties
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    for method in ("PUT", "DELETE"):
        resp = api.anon.request(method, url, data=b"" if method == "PUT" else None)
        assert resp.status_code == 403 and xml_code(resp.text) == "AuthorizationPermissionMismatch", method
    path = f"{VOL}/p.bin"
    _, purl, _ = part_url(api, path)
    for method in ("GET", "DELETE"):
        resp = api.anon.request(method, purl)
        assert resp.status_code == 403 and xml_code(resp.text) == "AuthorizationPermissionMismatch", method
    # headers are not signed by a SAS: another Content-Type is still a valid Put Block
    assert api.anon.put(purl, data=payload(100), headers={"Content-Type": "text/plain"}).status_code == 201


@pytest.mark.parametrize("cloud_name", CLOUDS)
def test_a_tampered_url_is_the_clouds_signature_error_and_never_reads_as_expired(
    emu: FilesApiEmulator, api: Api, cloud_name: str
) -> None:
    emu.update_settings(cloud=cloud_name)
    api.put(f"{VOL}/f.bin", b"abc")
    url = api.download_url(f"{VOL}/f.bin").json()["url"]
    resp = api.anon.get(url.replace("X-Emu-Signature=", "X-Emu-Signature=0"))
    assert resp.status_code == 403
    expected = "AuthenticationFailed" if cloud_name == "AZURE" else "SignatureDoesNotMatch"
    assert xml_code(resp.text) == expected
    assert "time frame" not in resp.text and "expired" not in resp.text.lower()


def test_wrong_method_on_a_resumable_session_url_is_xml_not_json(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(upload_protocol="resumable", cloud="GCP")
    path = f"{VOL}/r.bin"
    token = api.action(path, "initiate-upload").json()["resumable_upload"]["session_token"]
    url = api.http.post(
        f"{api.base}/api/2.0/fs/create-resumable-upload-url", json={"path": path, "session_token": token}
    ).json()["resumable_upload_url"]["url"]
    resp = api.anon.get(url)
    assert resp.status_code == 405
    assert resp.headers["Content-Type"] == "application/xml" and xml_code(resp.text) == "MethodNotAllowed"


@pytest.mark.parametrize(
    ("cloud_name", "code"), [("AWS", "SignatureDoesNotMatch"), ("AZURE", "AuthorizationPermissionMismatch")]
)
def test_legacy_abort_url_takes_delete_only(
    emu: FilesApiEmulator, api: Api, cloud_name: str, code: str
) -> None:
    emu.update_settings(cloud=cloud_name)
    path = f"{VOL}/a.bin"
    token = api.initiate(path)
    url = api.http.post(
        f"{api.base}/api/2.0/fs/create-abort-upload-url",
        json={"path": path, "session_token": token, "expire_time": expire_in()},
    ).json()["abort_upload_url"]["url"]
    resp = api.anon.get(url)
    assert resp.status_code == 403 and xml_code(resp.text) == code
    assert emu.sessions() != []
    assert api.anon.delete(url).status_code == 200
    assert emu.sessions() == []


# ================================================================ item 3: part answers per cloud


def test_azure_put_block_is_201_without_etag_and_complete_takes_blank_etags(
    emu: FilesApiEmulator, api: Api
) -> None:
    emu.update_settings(cloud="AZURE")
    path = f"{VOL}/azure.bin"
    chunks = [payload(MIN_PART, 1), payload(500, 2)]
    token = api.initiate(path)
    for number, chunk in enumerate(chunks, start=1):
        resp = api.put_part(api.part_url(path, token, number), chunk)
        assert resp.status_code == 201
        assert "ETag" not in resp.headers
    assert api.complete(path, token, [(1, ""), (2, '"0123456789abcdef0123456789abcdef"')]).status_code == 400
    assert api.complete(path, token, [(1, ""), (2, ""), (3, "")]).status_code == 400  # 3 never uploaded
    done = api.complete(path, token, [(1, ""), (2, "")])
    assert done.status_code == 200, done.text
    assert api.get(path).content == b"".join(chunks)


@pytest.mark.parametrize("cloud_name", ["AWS", "GCP"])
def test_s3_and_gcs_parts_are_200_with_a_quoted_etag_and_blank_etags_are_refused(
    emu: FilesApiEmulator, api: Api, cloud_name: str
) -> None:
    emu.update_settings(cloud=cloud_name)
    path = f"{VOL}/s3.bin"
    token = api.initiate(path)
    resp = api.put_part(api.part_url(path, token, 1), payload(100))
    assert resp.status_code == 200
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert api.complete(path, token, [(1, "")]).status_code == 400
    assert api.complete(path, token, [(1, etag)]).status_code == 200


# ================================================================ the command line


@pytest.mark.parametrize(("flags", "expected"), [([], True), (["--workspace-put-without-length"], False)])
def test_cli_flag_for_workspace_puts_without_a_length(
    tmp_path: Path, flags: list[str], expected: bool
) -> None:
    port_file, log = tmp_path / "port", tmp_path / "log"
    args = [
        sys.executable,
        "-m",
        "airflow_databricks_transfer.testing.files_api",
        "--root",
        str(tmp_path / "r"),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*args, "--port-file", str(port_file), *flags], stdout=out, stderr=out)
    try:
        port = wait_for_port(proc, port_file, log)
        settings = json.loads(urlopen(f"http://127.0.0.1:{port}/_emulator/settings", timeout=10).read())
        assert settings["workspace_put_requires_length"] is expected
    finally:
        proc.terminate()
        proc.wait(timeout=10)
