"""Shared pieces of the raw-HTTP protocol tests: constants, a plain ``requests`` client of the emulator
(``Api``) and small wire helpers. The module-scoped emulator fixtures built on them are in conftest.py."""

from __future__ import annotations

import email.utils
import http.client
import random
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
import requests

from airflow_databricks_transfer.testing.files_api import EmulatorSettings, FilesApiEmulator

pytestmark = pytest.mark.integration

TOKEN = "dapi-protocol-tests"
RO_TOKEN = "dapi-read-only"
VOLUME = "main.default.landing"
VOL = "/Volumes/main/default/landing"
MIN_PART = 64 * 1024
KiB = 1024

BASE_SETTINGS: dict[str, Any] = {
    "tokens": [TOKEN],
    "read_only_tokens": [RO_TOKEN],
    "min_part_size_bytes": MIN_PART,
    # these raw-HTTP tests send requests back to back and never retry: the workspace's rate limits
    # (on by default) have their own tests in test_emulator_listing.py
    "rate_limit_concurrent": 0,
    "rate_limit_per_s": 0,
}
_DEFAULTS = EmulatorSettings().updated(BASE_SETTINGS)
ALL_DEFAULTS: dict[str, Any] = {f.name: getattr(_DEFAULTS, f.name) for f in fields(EmulatorSettings)}


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``check`` (for assertions on the emulator's request log, written just after responding)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


OMIT = "<omit>"  # an expire_time argument that leaves the field out


def expire_in(seconds: float = 3600, now: float | None = None) -> str:
    """An expire_time the way the SDK writes it: RFC 3339 UTC, whole seconds, ``Z``."""
    ts = (time.time() if now is None else now) + seconds
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def error_code(resp: requests.Response) -> str:
    code: str = resp.json()["error_code"]
    return code


def error_reasons(resp: requests.Response) -> list[str]:
    return [d["reason"] for d in resp.json().get("details", []) if d.get("@type", "").endswith("ErrorInfo")]


class Api:
    """A tiny Files API client: one authenticated session for the workspace, one bare for presigned URLs."""

    def __init__(self, emu: FilesApiEmulator, token: str | None = TOKEN) -> None:
        self.base = emu.url
        self.http = requests.Session()
        self.http.trust_env = False
        if token is not None:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.anon = requests.Session()
        self.anon.trust_env = False

    def close(self) -> None:
        self.http.close()
        self.anon.close()

    # urls
    def files_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/fs/files{quote(path)}"

    def dirs_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/fs/directories{quote(path)}"

    def control(self, method: str, name: str, body: Any = None) -> requests.Response:
        return self.anon.request(method, f"{self.base}/_emulator/{name}", json=body)

    # files
    def put(self, path: str, data: bytes, overwrite: bool | None = None) -> requests.Response:
        params = {} if overwrite is None else {"overwrite": str(overwrite).lower()}
        return self.http.put(
            self.files_url(path),
            data=data,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.http.get(self.files_url(path), headers=headers or {})

    def head(self, path: str) -> requests.Response:
        return self.http.head(self.files_url(path))

    def delete(self, path: str) -> requests.Response:
        return self.http.delete(self.files_url(path))

    # directories
    def mkdir(self, path: str) -> requests.Response:
        return self.http.put(self.dirs_url(path))

    def list_page(
        self, path: str, page_size: int | None = None, token: str | None = None
    ) -> requests.Response:
        params: dict[str, Any] = {}
        if page_size is not None:
            params["page_size"] = page_size
        if token is not None:
            params["page_token"] = token
        return self.http.get(self.dirs_url(path), params=params, headers={"Accept": "application/json"})

    # multipart
    def action(self, path: str, action: str, **params: str) -> requests.Response:
        return self.http.post(self.files_url(path), params={"action": action, **params})

    def initiate(self, path: str, overwrite: bool | None = None) -> str:
        params = {} if overwrite is None else {"overwrite": str(overwrite).lower()}
        resp = self.action(path, "initiate-upload", **params)
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["multipart_upload"]["session_token"]
        return token

    def part_urls_resp(
        self, path: str, token: str, start: int, count: int, expire_time: str | None = None
    ) -> requests.Response:
        body: dict[str, Any] = {
            "path": path,
            "session_token": token,
            "start_part_number": start,
            "count": count,
        }
        if expire_time != OMIT:
            body["expire_time"] = expire_time or expire_in()
        return self.http.post(f"{self.base}/api/2.0/fs/create-upload-part-urls", json=body)

    def part_urls(
        self, path: str, token: str, start: int, count: int, expire_time: str | None = None
    ) -> list[Any]:
        resp = self.part_urls_resp(path, token, start, count, expire_time)
        assert resp.status_code == 200, resp.text
        urls: list[Any] = resp.json()["upload_part_urls"]
        return urls

    def part_url(self, path: str, token: str, number: int) -> str:
        url: str = self.part_urls(path, token, number, 1)[0]["url"]
        return url

    def put_part(self, url: str, data: bytes) -> requests.Response:
        return self.anon.put(url, data=data, headers={"Content-Type": "application/octet-stream"})

    def complete(self, path: str, token: str, parts: list[tuple[int, str]]) -> requests.Response:
        return self.http.post(
            self.files_url(path),
            params={"action": "complete-upload", "upload_type": "multipart", "session_token": token},
            json={"parts": [{"part_number": n, "etag": e} for n, e in parts]},
        )

    def abort(self, path: str, token: str) -> requests.Response:
        return self.action(path, "abort-upload", upload_type="multipart", session_token=token)

    def upload_parts(self, path: str, token: str, chunks: list[bytes]) -> list[tuple[int, str]]:
        etags = []
        for number, chunk in enumerate(chunks, start=1):
            resp = self.put_part(self.part_url(path, token, number), chunk)
            assert resp.status_code == 200, resp.text
            etags.append((number, resp.headers["ETag"]))
        return etags

    def download_url(self, path: str, expire_time: str | None = None) -> requests.Response:
        params = {"path": path}
        if expire_time != OMIT:
            params["expire_time"] = expire_time or expire_in()
        return self.http.post(f"{self.base}/api/2.0/fs/create-download-url", params=params)

    # unity catalog
    def uc(self, method: str, rest: str, body: Any = None, **params: str) -> requests.Response:
        return self.http.request(
            method, f"{self.base}/api/2.1/unity-catalog/{rest}", json=body, params=params or None
        )


def raw_request(
    emu: FilesApiEmulator, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, with the target sent exactly as written."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def serve_storage_proxy(emu: FilesApiEmulator) -> None:
    """Advertise FILES_API 2.0 multipart on the emulator's own host: storage-proxy part PUTs are served."""
    emu.update_settings(
        endpoints=[
            {
                "api": "FILES_API",
                "api_version": "2.0",
                "scheme": "http",
                "hostname": f"127.0.0.1:{emu.port}",
                "multipart_upload_supported": True,
            }
        ]
    )


def tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))
