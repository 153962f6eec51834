"""Azurite started by the project, and the TCP fault proxy doing what its rules say, over real sockets.

Raw-socket probes use a container with anonymous read access (no signing needed) and ``Connection:
close``, so one probe is one connection and byte counts are exact; SDK probes use fresh clients with a
short linear retry (the SDK's default waits 15-24 s per retry).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, LinearRetry

from airflow_databricks_transfer.testing.azurite import Azurite, AzuriteError
from airflow_databricks_transfer.testing.faultproxy import FaultProxy
from airflow_databricks_transfer.testing.faults import FaultRule

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
HANG_GUARD_S = 30.0  # only bounds a broken run; nothing below depends on it being short


@dataclass(frozen=True)
class PublicBlob:
    container: str
    name: str
    data: bytes

    @property
    def path(self) -> str:
        return f"/devstoreaccount1/{self.container}/{self.name}"


def client(cs: str, retries: int = 3, read_timeout: int = 60) -> BlobServiceClient:
    """A fresh client (no pooled connection from an earlier probe) with a short, fixed retry wait."""
    # the stub says int, the policy sleeps a float
    policy = LinearRetry(backoff=0.2, random_jitter_range=0, retry_total=retries)  # type: ignore[arg-type]
    return BlobServiceClient.from_connection_string(cs, retry_policy=policy, read_timeout=read_timeout)


def via(azurite: Azurite, proxy: FaultProxy) -> str:
    return azurite.connection_string(endpoint=f"http://127.0.0.1:{proxy.port}/{azurite.account_name}")


@pytest.fixture(scope="module")
def public_blob(azurite: Azurite) -> PublicBlob:
    """1 MiB of random bytes in a container anyone may read, uploaded straight to Azurite (no proxy)."""
    container = f"proxy-{uuid.uuid4().hex[:12]}"
    data = os.urandom(MiB)
    with client(azurite.connection_string()) as svc:
        svc.create_container(container, public_access="blob")
        svc.get_blob_client(container, "one.bin").upload_blob(data)
    return PublicBlob(container, "one.bin", data)


@pytest.fixture
def container(azurite: Azurite) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    with client(azurite.connection_string()) as svc:
        svc.create_container(name)
        yield name
        svc.delete_container(name)


@dataclass
class Probe:
    received: bytes
    error: OSError | None

    @property
    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]


def http_get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()


def probe(port: int, request: bytes, on_bytes: Callable[[socket.socket, bytes], None] | None = None) -> Probe:
    """Send ``request`` on a new connection and read to EOF; a reset ends it with ``error``."""
    got = bytearray()
    try:
        # a reset that lands before connect() returns in userspace surfaces from connect() itself
        with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S) as sock:
            sock.sendall(request)
            while chunk := sock.recv(64 * KiB):
                got += chunk
                if on_bytes is not None:
                    on_bytes(sock, bytes(got))
    except ConnectionError as exc:
        return Probe(bytes(got), exc)
    return Probe(bytes(got), None)


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# ---------------------------------------------------------------- Azurite itself


def test_azurite_round_trip_through_the_proxy(
    azurite: Azurite, azure_fault_proxy: FaultProxy, container: str
) -> None:
    data = os.urandom(2 * MiB + 7)
    with client(via(azurite, azure_fault_proxy)) as svc:
        blob = svc.get_blob_client(container, "round.bin")
        blob.upload_blob(data)
        assert blob.download_blob().readall() == data
    stats = azure_fault_proxy.stats()
    assert stats.connections >= 1
    assert stats.bytes_client_to_server > len(data)
    assert stats.bytes_server_to_client > len(data)
    records = azure_fault_proxy.connections()
    assert sum(r.bytes_client_to_server for r in records) == stats.bytes_client_to_server
    assert sum(r.bytes_server_to_client for r in records) == stats.bytes_server_to_client
    assert stats.cuts == stats.refused == stats.stalls == 0
    # and the blob really is in Azurite, not only in the proxy's path
    with client(azurite.connection_string()) as direct:
        assert direct.get_blob_client(container, "round.bin").download_blob().readall() == data


def test_azurite_instance_lifecycle(azurite: Azurite) -> None:
    with Azurite() as own:
        assert own.port != azurite.port
        assert own.blob_endpoint == f"http://127.0.0.1:{own.port}/devstoreaccount1"
        location = own.location
        assert location is not None and (location / "__azurite_db_blob__.json").exists()
        pid = own.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        with client(own.connection_string()) as svc:
            svc.create_container("only-here")
            assert [c.name for c in svc.list_containers()] == ["only-here"]
    assert not own.running
    assert not Path(f"/proc/{pid}").exists(), "stop() must end and reap the process"
    assert not location.exists(), "the temp location Azurite created must be removed on stop"


def test_missing_azurite_binary_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AzuriteError, match="npm ci"):
        Azurite(binary=str(tmp_path / "azurite-blob")).start()
    monkeypatch.setenv("AZURITE_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(AzuriteError, match="AZURITE_BIN"):
        Azurite().start()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- cuts


@pytest.mark.parametrize("cut_with", ["fin", "rst"])
def test_cut_server_to_client_after_n_bytes(
    azure_fault_proxy: FaultProxy, public_blob: PublicBlob, cut_with: str
) -> None:
    n = 100_000
    rule = azure_fault_proxy.add_rule(FaultRule(route="tcp", cut_after_bytes=n, cut_with=cut_with))  # type: ignore[arg-type]
    port = azure_fault_proxy.port
    got = probe(port, http_get(port, public_blob.path))
    assert got.received.startswith(b"HTTP/1.1 200")
    assert public_blob.data.startswith(got.body)
    if cut_with == "fin":
        assert got.error is None, "a FIN cut is a clean end of stream"
        assert len(got.received) == n
    else:
        assert isinstance(got.error, ConnectionResetError), "an RST cut is a reset"
        assert len(got.received) <= n
    (record,) = azure_fault_proxy.connections()
    assert (record.outcome, record.rule_id, record.bytes_server_to_client) == ("cut", rule.id, n)
    # the rule fired once (times=1): the next connection gets the whole blob
    again = probe(port, http_get(port, public_blob.path))
    assert again.error is None and again.body == public_blob.data
    assert azure_fault_proxy.stats().cuts == 1


@pytest.mark.parametrize("cut_with", ["fin", "rst"])
def test_cut_client_to_server_after_n_bytes(
    azure_fault_proxy: FaultProxy, public_blob: PublicBlob, cut_with: str
) -> None:
    port = azure_fault_proxy.port
    request = http_get(port, public_blob.path)
    n = len(request) - 10  # Azurite gets a request without its end, so it never answers
    azure_fault_proxy.add_rule(
        FaultRule(route="tcp", direction="client_to_server", cut_after_bytes=n, cut_with=cut_with)  # type: ignore[arg-type]
    )
    got = probe(port, request)
    assert got.received == b""
    if cut_with == "fin":
        assert got.error is None
    else:
        assert isinstance(got.error, ConnectionResetError)
    (record,) = azure_fault_proxy.connections()
    assert (record.outcome, record.bytes_client_to_server, record.bytes_server_to_client) == ("cut", n, 0)


def test_rule_leaves_the_other_direction_alone(
    azure_fault_proxy: FaultProxy, public_blob: PublicBlob
) -> None:
    # the request is ~100 bytes, so an upstream rule at 1,000 bytes never fires, while 1 MiB flows back
    rule = azure_fault_proxy.add_rule(
        FaultRule(route="tcp", direction="client_to_server", cut_after_bytes=1000)
    )
    port = azure_fault_proxy.port
    got = probe(port, http_get(port, public_blob.path))
    assert got.error is None and got.body == public_blob.data
    (record,) = azure_fault_proxy.connections()
    assert record.rule_id == rule.id and record.bytes_server_to_client > len(public_blob.data)


def test_sdk_upload_survives_one_cut_mid_body_and_fails_when_every_try_is_cut(
    azurite: Azurite, azure_fault_proxy: FaultProxy, container: str
) -> None:
    data = os.urandom(MiB)
    once = azure_fault_proxy.add_rule(
        FaultRule(route="tcp", direction="client_to_server", cut_after_bytes=256 * KiB, cut_with="rst")
    )
    with client(via(azurite, azure_fault_proxy), retries=3) as svc:
        svc.get_blob_client(container, "healed.bin").upload_blob(data)
    assert [r.outcome for r in azure_fault_proxy.connections()][:1] == ["cut"]
    azure_fault_proxy.remove_rule(once.id)
    azure_fault_proxy.add_rule(
        FaultRule(route="tcp", direction="client_to_server", cut_after_bytes=256 * KiB, times=None)
    )
    with client(via(azurite, azure_fault_proxy), retries=1) as svc, pytest.raises(AzureError):
        svc.get_blob_client(container, "never.bin").upload_blob(data)
    with client(azurite.connection_string()) as direct:
        assert direct.get_blob_client(container, "healed.bin").download_blob().readall() == data
        with pytest.raises(ResourceNotFoundError):
            direct.get_blob_client(container, "never.bin").get_blob_properties()


# ---------------------------------------------------------------- stalls


def test_stall_pauses_the_stream_at_n_bytes_until_released(
    azure_fault_proxy: FaultProxy, public_blob: PublicBlob
) -> None:
    n = 50_000
    azure_fault_proxy.add_rule(FaultRule(route="tcp", stall_after_bytes=n, delay_s=HANG_GUARD_S * 4))
    port = azure_fault_proxy.port
    seen_at_pause: list[int] = []

    def at_n(sock: socket.socket, got: bytes) -> None:
        if len(got) == n and not seen_at_pause:
            wait_until(lambda: azure_fault_proxy.stats().stalling_now == 1)
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # nothing beyond n while the proxy holds the stream
            seen_at_pause.append(len(got))
            sock.settimeout(HANG_GUARD_S)
            azure_fault_proxy.release_stalls()

    got = probe(port, http_get(port, public_blob.path), on_bytes=at_n)
    assert seen_at_pause == [n]
    assert got.error is None and got.body == public_blob.data
    # the proxy closes its side once both directions ended (the client's close comes after our EOF)
    wait_until(lambda: azure_fault_proxy.connections()[0].outcome != "open")
    (record,) = azure_fault_proxy.connections()
    assert record.stalled and record.outcome == "closed"


def test_stall_ends_by_itself_after_delay(azure_fault_proxy: FaultProxy, public_blob: PublicBlob) -> None:
    azure_fault_proxy.add_rule(FaultRule(route="tcp", delay_s=0.3))  # before the first response byte
    port = azure_fault_proxy.port
    got = probe(port, http_get(port, public_blob.path))
    assert got.error is None and got.body == public_blob.data
    assert azure_fault_proxy.stats().stalls == 1


def test_sdk_read_timeout_on_a_stalled_connection_heals_on_a_new_one(
    azurite: Azurite, azure_fault_proxy: FaultProxy, public_blob: PublicBlob
) -> None:
    azure_fault_proxy.add_rule(FaultRule(route="tcp", stall_after_bytes=64 * KiB, delay_s=HANG_GUARD_S * 4))
    with client(via(azurite, azure_fault_proxy), read_timeout=1) as svc:
        blob = svc.get_blob_client(public_blob.container, public_blob.name)
        assert blob.download_blob().readall() == public_blob.data
    stats = azure_fault_proxy.stats()
    assert stats.stalls == 1 and stats.connections >= 2


# ---------------------------------------------------------------- refusing connections


@pytest.mark.parametrize(
    ("nth", "times", "expected"), [(1, 2, [True, True, False]), (2, 1, [False, True, False])]
)
def test_refuse_connections_by_position(
    azure_fault_proxy: FaultProxy, public_blob: PublicBlob, nth: int, times: int, expected: list[bool]
) -> None:
    azure_fault_proxy.add_rule(FaultRule(route="tcp", refuse=True, nth=nth, times=times))
    port = azure_fault_proxy.port
    refused = []
    for _ in expected:
        got = probe(port, http_get(port, public_blob.path))
        if got.error is not None:
            assert got.received == b"" and isinstance(got.error, ConnectionError)
            refused.append(True)
        else:
            assert got.body == public_blob.data
            refused.append(False)
    assert refused == expected
    stats = azure_fault_proxy.stats()
    assert (stats.connections, stats.refused) == (len(expected), sum(expected))
    assert [r.outcome == "refused" for r in azure_fault_proxy.connections()] == expected


def test_sdk_download_gets_through_after_refused_connections(
    azurite: Azurite, azure_fault_proxy: FaultProxy, public_blob: PublicBlob
) -> None:
    azure_fault_proxy.add_rule(FaultRule(route="tcp", refuse=True, times=2))
    with client(via(azurite, azure_fault_proxy), retries=3) as svc:
        blob = svc.get_blob_client(public_blob.container, public_blob.name)
        assert blob.download_blob().readall() == public_blob.data
    assert azure_fault_proxy.stats().refused == 2


# ---------------------------------------------------------------- rules the proxy cannot honour


@pytest.mark.parametrize(
    "rule",
    [
        FaultRule(status=503),
        FaultRule(route="presigned.*", cut_after_bytes=10),
        FaultRule(route="tcp", cut_after_bytes=10, path="/x/*"),
        FaultRule(route="tcp", cut_after_bytes=10, phase="after"),
        FaultRule(route="tcp", expire=True),
    ],
)
def test_proxy_refuses_rules_it_cannot_apply(rule: FaultRule) -> None:
    with pytest.raises(ValueError):
        FaultProxy(("127.0.0.1", 1)).add_rule(rule)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stall_after_bytes": 10},
        {"refuse": True, "cut_after_bytes": 10},
        {"cut_after_bytes": 1, "direction": "sideways"},
        {"cut_after_bytes": 1, "cut_with": "rude"},
        {"stall_after_bytes": -1, "delay_s": 1.0},
    ],
)
def test_fault_rule_rejects_unclear_proxy_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultRule(route="tcp", **kwargs)  # type: ignore[arg-type]
