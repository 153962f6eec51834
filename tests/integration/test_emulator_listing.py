"""Listings and rate limits of the Files API emulator, on the wire (plain HTTP, no SDK).

Listings: the real order is unspecified and page tokens are bound to the request that made them, so the
emulator orders entries by a seeded hash, hands out opaque tokens, and omits proto3 defaults. Rate limits:
the workspace answers 429 REQUEST_LIMIT_EXCEEDED with Retry-After past ~10 concurrent or 100/s requests.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from airflow_databricks_transfer.testing.files_api import EmulatorSettings, FilesApiEmulator
from airflow_databricks_transfer.testing.files_api.ratelimit import RequestLimiter

pytestmark = pytest.mark.integration

TOKEN = "dapi-listing-tests"
VOLUME = "main.default.landing"
VOL = "/Volumes/main/default/landing"
NAMES = [f"f{i:02d}" for i in range(12)]


class Api:
    def __init__(self, emu: FilesApiEmulator) -> None:
        self.base = emu.url
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.headers["Authorization"] = f"Bearer {TOKEN}"

    def dirs_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/fs/directories{quote(path)}"

    def put(self, path: str, data: bytes) -> None:
        resp = self.http.put(self.files_url(path), data=data)
        assert resp.status_code in (200, 204), resp.text

    def files_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/fs/files{quote(path)}"

    def mkdir(self, path: str) -> None:
        assert self.http.put(self.dirs_url(path)).status_code in (200, 204)

    def page(self, path: str, page_size: int | None = None, token: str | None = None) -> requests.Response:
        params: dict[str, Any] = {}
        if page_size is not None:
            params["page_size"] = page_size
        if token is not None:
            params["page_token"] = token
        return self.http.get(self.dirs_url(path), params=params)

    def walk(self, path: str, page_size: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """Every entry in the order served, and the tokens seen."""
        entries: list[dict[str, Any]] = []
        tokens: list[str] = []
        token: str | None = None
        for _ in range(100):
            resp = self.page(path, page_size, token)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            entries.extend(body.get("contents", []))
            if "next_page_token" not in body:
                return entries, tokens
            token = body["next_page_token"]
            assert token
            tokens.append(token)
        raise AssertionError("listing did not end")


@pytest.fixture(scope="module")
def shared_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    root = tmp_path_factory.mktemp("files-api") / "root"
    with FilesApiEmulator(root, volumes=[VOLUME], tokens=[TOKEN]) as emu:
        yield emu


@pytest.fixture
def emu(shared_emu: FilesApiEmulator) -> FilesApiEmulator:
    """Default (strict) settings, except the rate limits, which the listing tests do not exercise."""
    shared_emu.update_settings(
        list_order="arbitrary", list_order_seed=0, rate_limit_concurrent=0, rate_limit_per_s=0
    )
    shared_emu.reset()
    shared_emu.create_volume(VOLUME)
    return shared_emu


@pytest.fixture
def api(emu: FilesApiEmulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.http.close()


@pytest.fixture
def filled(api: Api) -> Api:
    for i, name in enumerate(NAMES):
        api.put(f"{VOL}/d/{name}", b"x" * i)
    api.mkdir(f"{VOL}/d/sub")
    return api


# ---------------------------------------------------------------- order


def test_defaults_are_arbitrary_order_and_the_real_rate_limits() -> None:
    s = EmulatorSettings()
    assert (s.list_order, s.rate_limit_concurrent, s.rate_limit_per_s) == ("arbitrary", 10, 100)


def test_order_is_arbitrary_but_reproducible_for_a_seed(emu: FilesApiEmulator, filled: Api) -> None:
    first = [e["name"] for e in filled.walk(f"{VOL}/d")[0]]
    assert sorted(first) == sorted([*NAMES, "sub"])
    assert first != sorted(first)
    assert [e["name"] for e in filled.walk(f"{VOL}/d")[0]] == first
    emu.update_settings(list_order_seed=7)
    other = [e["name"] for e in filled.walk(f"{VOL}/d")[0]]
    assert sorted(other) == sorted(first)
    assert other != first
    emu.update_settings(list_order="sorted")
    assert [e["name"] for e in filled.walk(f"{VOL}/d")[0]] == sorted(first)


def test_pages_partition_the_single_page_order(filled: Api) -> None:
    whole = [e["name"] for e in filled.walk(f"{VOL}/d")[0]]
    paged, tokens = filled.walk(f"{VOL}/d", page_size=5)
    assert [e["name"] for e in paged] == whole
    assert len(tokens) == 2


def test_entries_deleted_or_added_between_pages_do_not_shift_the_rest(filled: Api) -> None:
    first = filled.page(f"{VOL}/d", page_size=4).json()
    seen = [e["name"] for e in first["contents"]]
    for name in seen:  # what a recursive delete does while it walks the listing
        url = filled.dirs_url(f"{VOL}/d/{name}") if name == "sub" else filled.files_url(f"{VOL}/d/{name}")
        assert filled.http.delete(url).status_code < 300
    filled.put(f"{VOL}/d/new", b"n")
    token: str | None = first["next_page_token"]
    later: list[str] = []
    while token:
        body = filled.page(f"{VOL}/d", page_size=4, token=token).json()
        later.extend(e["name"] for e in body.get("contents", []))
        token = body.get("next_page_token")
    # every entry that stayed is served once; one added meanwhile may or may not be (as on any server)
    assert sorted(set(later) - {"new"}) == sorted(set([*NAMES, "sub"]) - set(seen))
    assert len(later) == len(set(later))


# ---------------------------------------------------------------- tokens


def test_page_token_is_opaque(filled: Api) -> None:
    token = filled.page(f"{VOL}/d", page_size=3).json()["next_page_token"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert not any(name.encode() in raw for name in NAMES)
    assert b"/Volumes" not in raw


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"path": f"{VOL}/e"}, id="other-directory"),
        pytest.param({"page_size": 4}, id="other-page-size"),
        pytest.param({"page_size": None}, id="page-size-dropped"),
    ],
)
def test_page_token_reused_with_other_parameters_is_400(filled: Api, change: dict[str, Any]) -> None:
    for name in NAMES:
        filled.put(f"{VOL}/e/{name}", b"y")
    token = filled.page(f"{VOL}/d", page_size=3).json()["next_page_token"]
    args: dict[str, Any] = {"path": f"{VOL}/d", "page_size": 3, **change}
    resp = filled.page(args["path"], args["page_size"], token)
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # the same token with the parameters that made it still works
    assert filled.page(f"{VOL}/d", 3, token).status_code == 200


def test_page_token_survives_a_trailing_slash_on_the_directory(filled: Api) -> None:
    token = filled.page(f"{VOL}/d", page_size=3).json()["next_page_token"]
    assert filled.page(f"{VOL}/d/", 3, token).status_code == 200


@pytest.mark.parametrize(
    "garbage",
    ["nope", "ZjAx", base64.urlsafe_b64encode(b"f01").decode(), "A" * 200, "%%%"],
)
def test_garbage_page_token_is_400(filled: Api, garbage: str) -> None:
    resp = filled.page(f"{VOL}/d", 3, garbage)
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_tampered_page_token_is_400(filled: Api) -> None:
    token = filled.page(f"{VOL}/d", page_size=3).json()["next_page_token"]
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[14] ^= 1
    bad = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert filled.page(f"{VOL}/d", 3, bad).status_code == 400


# ---------------------------------------------------------------- proto3 JSON


def test_defaults_are_omitted_as_proto3_json_does(api: Api) -> None:
    api.put(f"{VOL}/p/empty", b"")
    api.put(f"{VOL}/p/full", b"abc")
    api.mkdir(f"{VOL}/p/dir")
    api.mkdir(f"{VOL}/p/void")
    body = api.page(f"{VOL}/p").json()
    assert set(body) == {"contents"}  # no next_page_token on the last page
    by_name = {e["name"]: e for e in body["contents"]}
    assert set(by_name["empty"]) == {"path", "name", "last_modified"}
    assert by_name["empty"]["path"] == f"{VOL}/p/empty"
    assert "is_directory" not in by_name["full"] and by_name["full"]["file_size"] == 3
    assert by_name["dir"]["is_directory"] is True and "file_size" not in by_name["dir"]
    assert api.page(f"{VOL}/p/void").json() == {}


# ---------------------------------------------------------------- rate limits


def _stall(emu: FilesApiEmulator, n: int) -> list[socket.socket]:
    """Hold n request slots: PUTs whose declared body never comes, so the server waits on each."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", emu.port), timeout=10)
        s.sendall(
            (
                f"PUT /api/2.0/fs/files{VOL}/stall-{i} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: 10\r\n\r\n"
            ).encode()
        )
        socks.append(s)
    return socks


def _wait_in_flight(emu: FilesApiEmulator, n: int) -> None:
    deadline = time.monotonic() + 10
    while emu.server.limiter.in_flight < n:
        assert time.monotonic() < deadline, "stalled requests never reached the server"
        time.sleep(0.01)


def test_concurrency_limit_answers_429_with_retry_after(emu: FilesApiEmulator, api: Api) -> None:
    emu.update_settings(rate_limit_concurrent=3)
    socks = _stall(emu, 3)
    try:
        _wait_in_flight(emu, 3)
        resp = api.page(VOL)
        assert resp.status_code == 429
        assert resp.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert resp.headers["Retry-After"] == "1"
        # the data plane, the control plane and discovery are not the workspace's API
        assert api.http.get(f"{api.base}/.well-known/databricks-config").status_code == 200
        assert api.http.get(f"{api.base}/_emulator/settings").status_code == 200
    finally:
        for s in socks:
            s.close()
    _wait_in_flight_below(emu, 1)
    assert api.page(VOL).status_code == 200
    statuses = [r.status for r in emu.requests("directories.get")]
    assert statuses == [429, 200]


def _wait_in_flight_below(emu: FilesApiEmulator, n: int) -> None:
    deadline = time.monotonic() + 10
    while emu.server.limiter.in_flight >= n:
        assert time.monotonic() < deadline, "stalled requests were never released"
        time.sleep(0.01)


def test_presigned_urls_are_not_rate_limited(emu: FilesApiEmulator, api: Api) -> None:
    api.put(f"{VOL}/f", b"abc")
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    url = api.http.post(
        f"{api.base}/api/2.0/fs/create-download-url", params={"path": f"{VOL}/f", "expire_time": expire}
    )
    emu.update_settings(rate_limit_concurrent=1)
    socks = _stall(emu, 1)
    try:
        _wait_in_flight(emu, 1)
        got = requests.get(url.json()["url"], timeout=10)
        assert got.status_code == 200 and got.content == b"abc"
        assert api.page(VOL).status_code == 429
    finally:
        for s in socks:
            s.close()


def test_requests_per_second_limit_answers_429(
    emu: FilesApiEmulator, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(emu.server, "limiter", RequestLimiter(clock=lambda: now[0]))
    emu.update_settings(rate_limit_per_s=5)
    assert [api.page(VOL).status_code for _ in range(7)] == [200] * 5 + [429] * 2
    now[0] += 0.999  # still within the second the five started in
    assert api.page(VOL).status_code == 429
    now[0] += 0.001  # a refused request was not counted: a full new second is open
    assert [api.page(VOL).status_code for _ in range(6)] == [200] * 5 + [429]


def test_cli_flags_set_the_listing_and_limit_settings(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    module = "airflow_databricks_transfer.testing.files_api"
    flags = ["--list-order", "sorted", "--list-order-seed", "5"]
    limits = ["--rate-limit-concurrent", "3", "--rate-limit-per-s", "7"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--root",
            str(tmp_path / "r"),
            *flags,
            *limits,
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the emulator never wrote its port"
            time.sleep(0.05)
        got = requests.get(f"http://127.0.0.1:{port_file.read_text()}/_emulator/settings", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(30)
    assert (got["list_order"], got["list_order_seed"]) == ("sorted", 5)
    assert (got["rate_limit_concurrent"], got["rate_limit_per_s"]) == (3, 7)
