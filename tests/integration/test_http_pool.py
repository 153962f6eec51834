"""The data-path HTTP pool over real sockets: slow and stalled peers, cancel, connection lifetime,
descriptors above 1024, proxies and CA bundles from the environment.

The servers here are small socket servers in the test (a reader that takes bytes at a set rate, a
proxy that counts what it relays, a TLS server with a self-signed certificate), because each test needs
one precise misbehaviour the emulator has no knob for.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import os
import resource
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airflow_databricks_transfer.clients.http import HttpPool
from airflow_databricks_transfer.engine.errors import ConnectionLostError
from airflow_databricks_transfer.engine.retry import Cancelled

if TYPE_CHECKING:
    from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

pytestmark = pytest.mark.integration

MiB = 1 << 20
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS + CA_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# ---------------------------------------------------------------------------------------------- servers
class RateReader:
    """Accepts connections; reads each request's body at ``rate`` bytes/s up to ``limit`` bytes, then
    stops reading (a stalled peer) until ``release`` is set; answers 200 once the whole body is in."""

    def __init__(self, rate: float, limit: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.rate, self.limit, self.tls = rate, limit, tls
        self.received = 0
        self.digest = hashlib.sha256()  # of every body byte, in order
        self.connections = 0
        self.closed = 0  # connections the client closed (EOF seen)
        self.release = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", 0))
        # a small receive buffer, so the client's progress follows our reading closely
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.port = self._srv.getsockname()[1]
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}/part"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        buf = memoryview(bytearray(64 * 1024))
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        self.closed += 1
                        return
                    pending += data
                head, _, rest = pending.partition(b"\r\n\r\n")
                pending = b""
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.received += len(rest)
                self.digest.update(rest)
                left = length - len(rest)
                started = time.monotonic()
                taken = 0
                while left > 0:
                    if self.limit is not None and self.received >= self.limit:
                        self.release.wait()
                        return
                    step = min(len(buf), left)
                    if self.limit is not None:
                        step = min(step, self.limit - self.received)
                    n = conn.recv_into(buf[:step])
                    if n == 0:
                        self.closed += 1
                        return
                    self.received += n
                    self.digest.update(buf[:n])
                    taken += n
                    left -= n
                    ahead = started + taken / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.release.set()
        self._srv.close()


class SlowBodyServer:
    """Answers every GET with ``size`` bytes sent at ``rate`` bytes/s."""

    def __init__(self, size: int, rate: float) -> None:
        self.size, self.rate = size, rate
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self._srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                piece = b"x" * (64 * 1024)
                started, sent = time.monotonic(), 0
                while sent < self.size:
                    n = min(len(piece), self.size - sent)
                    conn.sendall(piece[:n])
                    sent += n
                    ahead = started + sent / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                conn.recv(1)  # until the client hangs up

    def close(self) -> None:
        self._srv.close()


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        got = self.rfile.read(length) if length else b""
        body = f"{self.command} {self.path} {len(got)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.context = context
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, addr

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class CountingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy: CONNECT tunnels and absolute-form requests, both relayed byte for byte."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.auth: list[str | None] = []  # the Proxy-Authorization header of each request or CONNECT
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: CountingProxy

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1").strip()
        method, target, version = line.split(" ")
        head = []
        while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            head.append(h)
        self.server.seen.append((method, target))
        auth = [
            h.split(b":", 1)[1].strip().decode()
            for h in head
            if h.lower().startswith(b"proxy-authorization:")
        ]
        self.server.auth.append(auth[0] if auth else None)
        if method != "CONNECT":  # a proxy does not pass its credentials on
            head = [h for h in head if not h.lower().startswith(b"proxy-authorization:")]
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            rest = target.split("://", 1)[1]
            netloc, _, path = rest.partition("/")
            host, port = netloc.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            upstream.sendall(f"{method} /{path} {version}\r\n".encode() + b"".join(head) + b"\r\n")
        self._relay(upstream)

    def _relay(self, upstream: socket.socket) -> None:
        client = self.connection
        buffered = self.rfile.peek(0) if hasattr(self.rfile, "peek") else b""
        if buffered:
            upstream.sendall(self.rfile.read(len(buffered)))
        with upstream:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 10)
                if not readable:
                    return
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    (upstream if src is client else client).sendall(data)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[EchoServer, Path]]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = EchoServer(ctx)
    yield srv, cert
    srv.stop()


@pytest.fixture
def proxy() -> Iterator[CountingProxy]:
    p = CountingProxy()
    yield p
    p.stop()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_slow_reader_that_keeps_reading_is_not_timed_out(
    tls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 MiB at 2 MiB/s takes ~6 s: three times the 2 s timeout, with progress all along. Over TLS a
    1 MiB write outlasts the 0.25 s tick and is resumed: the bytes must arrive once, in order."""
    context = None
    if tls:
        cert, key = self_signed(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    server = RateReader(rate=2 * MiB, tls=context)
    pool = HttpPool(timeout_s=2.0)
    body = os.urandom(12 * MiB)
    try:
        started = time.monotonic()
        resp = pool.request("PUT", server.url, {}, body=memoryview(body))
        assert resp.status == 200 and resp.read() == b"ok"
        assert server.received == 12 * MiB
        assert server.digest.hexdigest() == hashlib.sha256(body).hexdigest()
        # the point of the test: the send lasted well past the timeout and still succeeded
        assert time.monotonic() - started > 2 * pool.timeout_s
    finally:
        pool.close()
        server.close()


def test_a_stalled_reader_fails_after_the_inactivity_timeout() -> None:
    """The peer reads 6 MiB over ~3 s, then nothing: the send fails only once 2 s pass without progress."""
    server = RateReader(rate=2 * MiB, limit=6 * MiB)
    pool = HttpPool(timeout_s=2.0)
    try:
        with pytest.raises(ConnectionLostError, match="no progress for 2 s"):
            pool.request("PUT", server.url, {}, body=memoryview(bytearray(24 * MiB)))
        assert server.received == 6 * MiB  # everything the peer was willing to read, it got
    finally:
        pool.close()
        server.close()


def test_cancel_stops_a_send_in_flight_within_a_second() -> None:
    server = RateReader(rate=MiB, limit=0)  # never reads a body byte
    pool = HttpPool(timeout_s=30.0)
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def fire() -> None:
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        cancel.set()

    try:
        threading.Thread(target=fire, daemon=True).start()
        with pytest.raises(Cancelled):
            pool.request("PUT", server.url, {}, body=memoryview(bytearray(32 * MiB)), cancel=cancel)
        waited = time.monotonic() - cancelled_at[0]
        # the old code sat in sendall until the 30 s timeout; a tick is 0.25 s
        assert waited < 5.0, f"cancel took {waited:.1f} s"
        assert pool.open_connections() == 0  # a half-sent request's connection is never reused
    finally:
        pool.close()
        server.close()


def test_a_slow_response_body_is_read_as_long_as_bytes_keep_coming() -> None:
    """Receiving was already per-receive; this keeps it so: 6 MiB at 1.5 MiB/s with a 2 s timeout."""
    server = SlowBodyServer(6 * MiB, rate=1.5 * MiB)
    pool = HttpPool(timeout_s=2.0)
    try:
        started = time.monotonic()
        resp = pool.request("GET", f"http://127.0.0.1:{server.port}/x")
        buf = memoryview(bytearray(256 * 1024))
        total = 0
        while n := resp.readinto(buf):
            total += n
        assert total == 6 * MiB
        assert time.monotonic() - started > pool.timeout_s
    finally:
        pool.close()
        server.close()


def test_a_paced_send_holds_its_rate() -> None:
    """``pace`` is called per piece before it goes: 3 MiB paced at 1 MiB/s cannot finish before ~3 s."""
    from airflow_databricks_transfer.engine.progress import BandwidthLimiter

    server = RateReader(rate=1000 * MiB)
    limiter = BandwidthLimiter(MiB)
    paced: list[int] = []

    def pace(n: int) -> None:
        paced.append(n)
        limiter.acquire(n)

    pool = HttpPool()
    try:
        started = time.monotonic()
        resp = pool.request("PUT", server.url, {}, body=memoryview(bytearray(3 * MiB)), pace=pace)
        resp.read()
        elapsed = time.monotonic() - started
        assert sum(paced) == 3 * MiB and max(paced) <= 256 * 1024
        assert 3 * MiB / elapsed <= MiB * 1.1
    finally:
        pool.close()
        server.close()


# ---------------------------------------------------------------------------------------------- item 11b
def test_close_closes_connections_of_every_thread() -> None:
    server = RateReader(rate=1000 * MiB)
    pool = HttpPool()
    try:
        with ThreadPoolExecutor(3) as ex:  # threads stay alive after their requests
            barrier = threading.Barrier(3)

            def one(_: int) -> None:
                barrier.wait()  # three threads at once: three connections
                pool.request("PUT", server.url, {}, body=b"abc").read()

            list(ex.map(one, range(3)))
            assert server.connections == 3
            pool.close()
            deadline = time.monotonic() + 10
            while server.closed < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.closed == 3
    finally:
        server.close()


def test_connections_of_finished_threads_are_closed() -> None:
    server = RateReader(rate=1000 * MiB)
    pool = HttpPool()
    try:
        t = threading.Thread(target=lambda: pool.request("PUT", server.url, {}, body=b"abc").read())
        t.start()
        t.join()
        pool.request("PUT", server.url, {}, body=b"abc").read()  # a new connection sweeps orphans
        deadline = time.monotonic() + 10
        while server.closed < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.closed == 1
    finally:
        pool.close()
        server.close()


def test_keep_alive_works_for_descriptors_above_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    server = RateReader(rate=1000 * MiB)
    pool = HttpPool()
    try:
        for _ in range(3):
            resp = pool.request("PUT", server.url, {}, body=b"abc")
            assert resp.read() == b"ok"
            assert resp._conn.sock is not None and resp._conn.sock.fileno() >= 1024
        assert server.connections == 1  # select() failed on this fd and every request reconnected
    finally:
        pool.close()
        server.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_tls_trusts_the_requests_ca_bundle(
    tls_server: tuple[EchoServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert = tls_server
    url = f"https://localhost:{srv.port}/v"
    untrusting = HttpPool(timeout_s=10)
    with pytest.raises(ConnectionLostError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.request("GET", url)
    untrusting.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    pool = HttpPool(timeout_s=10)
    try:
        resp = pool.request("PUT", url, {}, body=b"12345")
        assert resp.status == 200 and resp.read() == b"PUT /v 5"
    finally:
        pool.close()


def test_tls_trusts_ssl_cert_file(
    tls_server: tuple[EchoServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    pool = HttpPool(timeout_s=10)
    try:
        resp = pool.request("GET", f"https://127.0.0.1:{srv.port}/w")
        assert resp.read() == b"GET /w 0"
    finally:
        pool.close()


def test_a_large_tls_body_goes_through(
    tls_server: tuple[EchoServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    pool = HttpPool(timeout_s=10)
    try:
        resp = pool.request(
            "PUT", f"https://localhost:{srv.port}/big", {}, body=memoryview(bytearray(5 * MiB))
        )
        assert resp.read() == f"PUT /big {5 * MiB}".encode()
    finally:
        pool.close()


def test_https_goes_through_a_connect_tunnel(
    tls_server: tuple[EchoServer, Path], proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{proxy.port}")
    pool = HttpPool(timeout_s=10)
    try:
        for _ in range(2):
            resp = pool.request("PUT", f"https://localhost:{srv.port}/t?x=1", {}, body=b"abc")
            assert resp.read() == b"PUT /t?x=1 3"
        assert proxy.seen == [("CONNECT", f"localhost:{srv.port}")]  # one tunnel, kept alive
        assert proxy.auth == ["Basic dXNlcjpzZWNyZXQ="]  # user:secret from HTTPS_PROXY
    finally:
        pool.close()


def test_http_goes_to_the_proxy_in_absolute_form(
    echo: EchoServer, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}")
    pool = HttpPool(timeout_s=10)
    try:
        url = f"http://127.0.0.1:{echo.port}/abs"
        resp = pool.request("PUT", url, {}, body=b"hello")
        assert resp.read() == b"PUT /abs 5"
        assert proxy.seen == [("PUT", url)]
        assert proxy.auth == ["Basic dXNAZXI6cDpzcw=="]  # "us@er:p:ss", unquoted
    finally:
        pool.close()


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
def test_no_proxy_sends_direct(
    echo: EchoServer, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    pool = HttpPool(timeout_s=10)
    try:
        resp = pool.request("GET", f"http://127.0.0.1:{echo.port}/direct")
        assert resp.read() == b"GET /direct 0"
        assert proxy.seen == []
    finally:
        pool.close()


# ------------------------------------------------------------------------------ cancel, end to end
def test_uploader_cancel_aborts_a_part_in_flight(
    files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """Every part upload stalls 10 s before the server reads its body; cancel() must not wait for it."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    from airflow_databricks_transfer.clients.files_api import FilesApiClient
    from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions

    src = tmp_path / "src"
    src.write_bytes(os.urandom(16 * MiB))
    files_api_emulator.add_fault(route="presigned.part", delay_s=10, times=None)
    emu = files_api_emulator
    client = FilesApiClient(WorkspaceClient(config=Config(host=emu.url, token=emu.token)))
    uploader = Uploader(
        client.upload_target("/Volumes/main/default/landing/cancel.bin"),
        src,
        UploadOptions(part_size_bytes=8 * MiB, parallelism=2, multipart_threshold_bytes=1),
    )
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            uploader.run()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome.append(err)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(2.0)  # session, part URLs, and both workers into their (stalled) sends
    cancelled_at = time.monotonic()
    uploader.cancel()
    t.join(30)
    waited = time.monotonic() - cancelled_at
    client.http.close()
    assert outcome and isinstance(outcome[0], Cancelled), outcome
    # the stalled server answers after 10 s: the old sendall sat there until then
    assert waited < 5.0, f"cancel took {waited:.1f} s"


def test_downloader_cancel_aborts_a_receive_in_flight(
    files_api_emulator: FilesApiEmulator, tmp_path: Path
) -> None:
    """Every ranged GET stalls 10 s before the server answers; cancel() must not wait for it."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    from airflow_databricks_transfer.clients.files_api import FilesApiClient
    from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions

    emu = files_api_emulator
    client = FilesApiClient(WorkspaceClient(config=Config(host=emu.url, token=emu.token)))
    path = "/Volumes/main/default/landing/stalled.bin"
    resp = client.workspace_request(
        "PUT", f"/api/2.0/fs/files{path}?overwrite=true", body=memoryview(os.urandom(4 * MiB))
    )
    assert resp.read() == b"" or resp.status < 300
    emu.add_fault(route="presigned.download", delay_s=10, times=None)
    downloader = Downloader(
        client.download_source(path), tmp_path / "out", DownloadOptions(chunk_size_bytes=MiB, parallelism=2)
    )
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            downloader.run()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome.append(err)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(2.0)  # stat, download URL, and both workers waiting for their (stalled) answers
    cancelled_at = time.monotonic()
    downloader.cancel()
    t.join(30)
    waited = time.monotonic() - cancelled_at
    client.http.close()
    assert outcome and isinstance(outcome[0], Cancelled), outcome
    # the stalled server answers after 10 s: the old receive sat there until then
    assert waited < 5.0, f"cancel took {waited:.1f} s"


def test_hook_cancel_aborts_a_send_and_the_hook_closes_its_sockets(
    files_api_emulator: FilesApiEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DatabricksFilesHook.cancel() (what on_kill calls) during stalled part sends."""
    import json

    from airflow_databricks_transfer.engine.upload import UploadOptions
    from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

    emu = files_api_emulator
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    conn = {"conn_type": "databricks", "host": emu.url, "password": emu.token}
    monkeypatch.setenv("AIRFLOW_CONN_DBX_CANCEL", json.dumps(conn))
    hook = DatabricksFilesHook("dbx_cancel")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(16 * MiB))
    emu.add_fault(route="presigned.part", delay_s=10, times=None)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            hook.upload_file(
                str(src),
                "/Volumes/main/default/landing/hook-cancel.bin",
                options=UploadOptions(part_size_bytes=8 * MiB, parallelism=2, multipart_threshold_bytes=1),
            )
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome.append(err)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(3.0)  # connection lookup, session, part URLs, both workers into their stalled sends
    cancelled_at = time.monotonic()
    hook.cancel()
    t.join(30)
    waited = time.monotonic() - cancelled_at
    assert outcome and isinstance(outcome[0], Cancelled), outcome
    assert waited < 5.0, f"cancel took {waited:.1f} s"
    assert hook.client.http.open_connections() == 0  # the workers' sockets went with the transfer


@pytest.mark.parametrize("tls", [False, True], ids=["sendfile", "tls"])
def test_a_file_body_goes_out_whole(
    tls: bool,
    tls_server: tuple[EchoServer, Path],
    echo: EchoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """put_single's path: sendfile on plain sockets, pieces read from the file over TLS."""
    srv, cert = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    body = tmp_path / "body"
    body.write_bytes(os.urandom(9 * MiB + 7))
    url = f"https://localhost:{srv.port}/f" if tls else f"http://127.0.0.1:{echo.port}/f"
    paced: list[int] = []
    pool = HttpPool(timeout_s=10)
    try:
        resp = pool.request("PUT", url, {}, body_file=(str(body), 9 * MiB + 7), pace=paced.append)
        assert resp.read() == f"PUT /f {9 * MiB + 7}".encode()
        assert sum(paced) == 9 * MiB + 7
    finally:
        pool.close()


def test_a_half_sent_request_never_reuses_its_connection(echo: EchoServer, tmp_path: Path) -> None:
    """A file that shrank under sendfile leaves the server waiting for body bytes: that connection is
    dropped, so the next request is not read as the rest of the old body."""
    body = tmp_path / "short"
    body.write_bytes(os.urandom(MiB))
    pool = HttpPool(timeout_s=5)
    url = f"http://127.0.0.1:{echo.port}/s"
    try:
        with pytest.raises(ConnectionLostError, match="did the file shrink"):
            pool.request("PUT", url, {}, body_file=(str(body), 2 * MiB))
        assert pool.request("GET", url).read() == b"GET /s 0"
    finally:
        pool.close()
