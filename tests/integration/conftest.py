"""Fixtures for integration tests: real servers on loopback, official clients in subprocesses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from azure.storage.blob import BlobServiceClient, ExponentialRetry

from airflow_databricks_transfer.clients.files_api import FilesApiClient, FilesApiDownloadSource, _RangeReader
from airflow_databricks_transfer.engine.checkpoint import RemoteVersion
from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.testing.files_api.ratelimit import RequestLimiter
from tests.integration.protocol_api import ALL_DEFAULTS, BASE_SETTINGS, VOLUME, Api

REPO = Path(__file__).resolve().parents[2]
SDK_VERSIONS = ("0.156.0", "0.162.0")
DRIVER = Path(__file__).with_name("sdk_driver.py")
MiB = 1024 * 1024

SdkRun = Callable[..., list[Any]]

T = TypeVar("T")


def sdk_path(version: str) -> Path:
    path = REPO / ".sdk" / f"databricks-sdk-{version}"
    if not (path / "databricks" / "sdk" / "version.py").is_file():
        pytest.fail(f"databricks-sdk {version} is not side-installed in {path}: run scripts/bootstrap.sh")
    return path


def run_sdk(
    version: str,
    host: str,
    token: str,
    ops: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    timeout: float = 300,
) -> list[Any]:
    """Run ``ops`` with the official client of ``version`` in a fresh interpreter; return its results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sdk_path(version)), str(REPO)])}
    env.pop("DATABRICKS_CONFIG_PROFILE", None)
    proc = subprocess.run(
        [sys.executable, str(DRIVER)],
        input=json.dumps({"host": host, "token": token, "config": config or {}, "ops": ops}),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"sdk driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout)
    assert out["version"] == version
    results: list[Any] = out["results"]
    return results


@pytest.fixture(params=SDK_VERSIONS, ids=[f"sdk-{v}" for v in SDK_VERSIONS])
def sdk_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """Pseudo-random content (deterministic per seed), written in chunks."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    return path


@pytest.fixture
def conn(files_api_emulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """An Airflow ``databricks`` connection to the emulator (an AIRFLOW_CONN_* JSON); its id."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    conn = {
        "conn_type": "databricks",
        "host": files_api_emulator.url,
        "password": files_api_emulator.token,
        "extra": {"retry_timeout_seconds": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DBX_EMU_TEST", json.dumps(conn))
    return "dbx_emu_test"


def context(**values: Any) -> Any:
    """A task context with only what the code under test reads (typed Any: stand-ins, not the real ones)."""
    return values


class DictStore:
    """Stands in for the task state store (get/set/delete), so execute() runs outside a task runner."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


@contextlib.contextmanager
def frozen_request_window(emu: Any) -> Iterator[None]:
    """Freeze the emulator's one-second request window: once ``rate_limit_per_s`` API requests have
    started, every further one is answered 429 REQUEST_LIMIT_EXCEEDED until that setting changes.

    Throttling on cue, with no dependence on how fast the machine is. Swap at a quiet moment only.
    """
    saved = emu.server.limiter
    emu.server.limiter = RequestLimiter(clock=lambda: 0.0)
    try:
        yield
    finally:
        emu.server.limiter = saved


def throttled(emu: Any, route: str | None = None) -> int:
    """How many API requests (on ``route``, if given) the emulator answered 429."""
    return sum(1 for r in emu.requests(route) if r.status == 429)


def through_frozen_window(
    emu: Any, call: Callable[[], T], *, enough: int, route: str | None = None, timeout: float = 120.0
) -> T:
    """Run ``call`` while the emulator refuses every API request past its per-second limit (see
    ``frozen_request_window``); once ``enough`` requests (on ``route``) were answered 429, the limit is
    lifted, as when the workspace's other clients go quiet. Returns what ``call`` returned, or raises
    what it raised; a call that never ends fails the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread
            outcome.append(err)

    with frozen_request_window(emu):
        worker = threading.Thread(target=run)
        worker.start()
        wait_for(lambda: throttled(emu, route) >= enough or not worker.is_alive(), "429s or an end", timeout)
        emu.update_settings(rate_limit_per_s=100)
        worker.join(timeout)
    assert not worker.is_alive(), "the call did not end once the limit was lifted"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    result: T = outcome[0]
    return result


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until true (an event, not a duration: the timeout only bounds a broken run)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------- raw-HTTP protocol tests
@pytest.fixture(scope="module")
def shared_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    """One emulator per test module (a module may override ``emu`` to start from other settings)."""
    root = tmp_path_factory.mktemp("files-api") / "root"
    with FilesApiEmulator(root, volumes=[VOLUME], **BASE_SETTINGS) as emu:
        yield emu


@pytest.fixture
def emu(shared_emu: FilesApiEmulator) -> FilesApiEmulator:
    """The module's emulator with default settings, no files, no faults, an empty log and one volume."""
    shared_emu.update_settings(**ALL_DEFAULTS)
    shared_emu.reset()
    shared_emu.create_volume(VOLUME)
    return shared_emu


@pytest.fixture
def api(emu: FilesApiEmulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.close()


# ---------------------------------------------------------------- acting at a precise point of a download
class SteppedSource(FilesApiDownloadSource):
    """The real client, with an action run just before its n-th ranged GET (a precise moment of the
    transfer, where a checkpoint callback would race the workers)."""

    def __init__(self, client: FilesApiClient, path: str, before: dict[int, Callable[[], object]]) -> None:
        super().__init__(client, path)
        self.before, self.calls = before, 0

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> _RangeReader:
        self.calls += 1
        if self.calls in self.before:
            self.before[self.calls]()
        return super().open_range(start, length, pinned, cancel=cancel)


def blob_service(connection_string: str, *, read_timeout: int | None = None) -> BlobServiceClient:
    """A client as AzureBlobTransferHook builds it: the SDK's own retries off (the engine retries)."""
    extra: dict[str, Any] = {} if read_timeout is None else {"read_timeout": read_timeout}
    return BlobServiceClient.from_connection_string(
        connection_string, retry_policy=ExponentialRetry(retry_total=0), **extra
    )


@pytest.fixture(scope="module")
def direct(azurite: Azurite) -> Iterator[BlobServiceClient]:
    """A client straight to the session's Azurite (no proxy), for setting up and checking blobs."""
    with blob_service(azurite.connection_string()) as svc:
        yield svc


@pytest.fixture(scope="module")
def container(direct: BlobServiceClient) -> Iterator[str]:
    """A container of the module's own in the session's Azurite."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    direct.create_container(name)
    yield name
    direct.delete_container(name)
