"""A lean keep-alive HTTP/1.1 client for the data path.

Each thread keeps its own connection per host; the pool tracks every connection it opened, so
``close()`` (at the end of a transfer) closes those of finished worker threads too. A body goes out
as ``send`` calls on slices of one memoryview (or ``sendfile`` from a file): no copies into new
``bytes``, a handful of syscalls per part.

Timeouts are inactivity timeouts, not deadlines: a part may take as long as the link needs, as long
as the peer keeps taking bytes (a 60 s deadline used to fail every 16 MiB part below ~270 KiB/s).
A blocked send wakes every ``_TICK_S`` to look at the cancel event, and a watcher shuts down the socket
of a request whose cancel event is set (a blocked receive then returns at once), so ``cancel()`` stops a
transfer in flight within about a second. An optional ``pace`` callback is called before each piece, which is
how a bandwidth limit applies to bytes as they go instead of to whole parts.

Proxies and CA bundles follow the environment as ``requests`` (and so the SDK's control calls) does:
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` by requests' own rules, ``REQUESTS_CA_BUNDLE`` or
``CURL_CA_BUNDLE`` as the only trusted CAs, else the system store (which honours ``SSL_CERT_FILE``).

Socket failures become ``ConnectionLostError`` here, at the boundary; status codes are left to the
protocol adapter.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import os
import select
import socket
import ssl
import struct
import termios
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote, urlsplit

import requests.utils

from airflow_databricks_transfer import __version__
from airflow_databricks_transfer.engine.errors import ConnectionLostError, FatalError
from airflow_databricks_transfer.engine.retry import Cancelled

USER_AGENT = f"airflow-databricks-transfer/{__version__}"
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_TICK_S = 0.25  # a blocked send looks at the cancel event (and at progress) this often
_PIECE = 4 << 20  # most bytes handed to one send(); the kernel takes what fits
_TLS_PIECE = 1 << 20  # TLS writes complete whole: keep them small enough to see progress
_PACED_PIECE = 256 << 10  # with a bandwidth limit: fine-grained, so the limit holds over short spans
_FILE_PIECE = 8 << 20

Pace = Callable[[int], None]


@dataclass
class Response:
    status: int
    headers: Message
    _resp: http.client.HTTPResponse
    _conn: http.client.HTTPConnection
    _pool: HttpPool
    _cancel: threading.Event | None = None

    def read(self, limit: int = 1 << 20) -> bytes:
        """Read a (small) body completely; the connection is then reused."""
        try:
            data = self._resp.read(limit)
            if not self._resp.isclosed():
                self._resp.read()  # drain anything above the limit so the connection stays usable
        except _NETWORK_ERRORS as err:
            self._pool.discard(self._conn)
            self._raise_cancelled(err)
            raise ConnectionLostError(f"connection lost while reading a response: {err}") from err
        finally:
            _WATCH.remove(self._conn)
        return data

    def _raise_cancelled(self, err: BaseException) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("receive cancelled") from err

    def readinto(self, buf: memoryview) -> int:
        """Read what has arrived, up to ``len(buf)``: at least one byte, 0 at the end of the body.

        A Content-Length body is read with one ``recv`` into ``buf`` (``readinto1``), not filled by a
        loop as ``HTTPResponse.readinto`` does, so the caller sees a stop between reads even on a slow
        link and may ask for many MiB at once. Each receive waits at most the pool's timeout: a slow
        body is fine, a silent one is not.
        """
        resp = self._resp
        try:
            if resp.chunked or resp.length is None or resp.fp is None:
                n = resp.readinto(buf)
            elif resp.length == 0 or not len(buf):
                if resp.length == 0:
                    resp.read()  # ends the response (reads nothing) so the connection is reused
                n = 0
            else:
                n = resp.fp.readinto1(buf[: resp.length])
                if n == 0:  # the server closed the connection inside the body (or a cancel shut it)
                    self._pool.discard(self._conn)
                    resp.close()
                else:
                    resp.length -= n
                    if resp.length == 0:
                        resp.read()  # ends the response (length 0: reads nothing); the connection is reused
        except http.client.IncompleteRead as err:
            self._pool.discard(self._conn)
            self._raise_cancelled(err)
            raise ConnectionLostError(
                f"response body ended early ({len(err.partial)} bytes in the last read)"
            ) from err
        except _NETWORK_ERRORS as err:
            self._pool.discard(self._conn)
            self._raise_cancelled(err)
            raise ConnectionLostError(f"connection lost while reading a body: {err}") from err
        if n == 0 and len(buf) and self._cancel is not None and self._cancel.is_set():
            self._pool.discard(self._conn)
            raise Cancelled("receive cancelled")
        return n

    def close(self) -> None:
        """Give the connection back if the body was read to the end, else drop it."""
        _WATCH.remove(self._conn)
        if not self._resp.isclosed() or self._resp.will_close:
            self._pool.discard(self._conn)
        self._resp.close()


@dataclass(frozen=True)
class _Route:
    """How to reach one (scheme, netloc): directly, through a CONNECT tunnel, or via an HTTP proxy."""

    absolute_form: bool  # plain http through a proxy: the request line carries the whole URL
    proxy_headers: tuple[tuple[str, str], ...]


class HttpPool:
    def __init__(self, timeout_s: float = 60.0) -> None:
        """``timeout_s``: how long a peer may make no progress (connect, send, receive) before we give up."""
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        # every open connection and the thread that owns it, so close() reaches them all
        self._owners: dict[http.client.HTTPConnection, weakref.ref[threading.Thread]] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ connections
    def _conns(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = {}
            self._local.conns = conns
        return conns

    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, _Route]:
        conns = self._conns()
        conn = conns.get((scheme, netloc))
        if conn is not None and (conn.sock is None or _peer_closed(conn.sock)):
            # closed (by us, or by the server while idle): never send a request into it
            self.discard(conn)
            conn = None
        route = self._routes.get((scheme, netloc))
        if conn is None or route is None:
            self._close_orphans()
            conn, route = self._open(scheme, netloc)
            conns[(scheme, netloc)] = conn
            with self._lock:
                self._owners[conn] = weakref.ref(threading.current_thread())
                self._routes[(scheme, netloc)] = route
        return conn, route

    def _open(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, _Route]:
        if scheme not in ("http", "https"):
            raise FatalError(f"unsupported URL scheme {scheme!r} on the data path")
        proxy = requests.utils.select_proxy(
            f"{scheme}://{netloc}/", requests.utils.get_environ_proxies(f"{scheme}://{netloc}/")
        )
        if not proxy:
            if scheme == "https":
                return http.client.HTTPSConnection(
                    netloc, timeout=self.timeout_s, context=self.ssl_context()
                ), _Route(False, ())
            return http.client.HTTPConnection(netloc, timeout=self.timeout_s), _Route(False, ())
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.scheme != "http" or not p.hostname:
            raise FatalError(f"only http:// proxies are supported on the data path (got a {p.scheme} proxy)")
        auth: tuple[tuple[str, str], ...] = ()
        if p.username is not None:
            cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = (("Proxy-Authorization", "Basic " + base64.b64encode(cred).decode("ascii")),)
        host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
        proxy_netloc = f"{host}:{p.port or 80}"
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                proxy_netloc, timeout=self.timeout_s, context=self.ssl_context()
            )
            target = urlsplit(f"https://{netloc}")
            conn.set_tunnel(target.hostname or netloc, target.port or 443, headers=dict(auth))
            return conn, _Route(False, ())
        return http.client.HTTPConnection(proxy_netloc, timeout=self.timeout_s), _Route(True, auth)

    def ssl_context(self) -> ssl.SSLContext:
        """Trust what ``requests`` would: its CA bundle variables, else the system store."""
        if self._ssl is None:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
            if bundle and os.path.isdir(bundle):
                self._ssl = ssl.create_default_context(capath=bundle)
            else:
                self._ssl = ssl.create_default_context(cafile=bundle)
        return self._ssl

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended (worker threads of finished transfers)."""
        with self._lock:
            dead = [c for c, owner in self._owners.items() if (t := owner()) is None or not t.is_alive()]
            for conn in dead:
                del self._owners[conn]
        for conn in dead:
            with contextlib.suppress(OSError):
                conn.close()

    def discard(self, conn: http.client.HTTPConnection) -> None:
        _WATCH.remove(conn)
        conns = self._conns()
        for key, value in list(conns.items()):
            if value is conn:
                del conns[key]
        with self._lock:
            self._owners.pop(conn, None)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        """Close every connection of the pool, whichever thread opened it (with no request in flight)."""
        with self._lock:
            conns = list(self._owners)
            self._owners.clear()
        self._conns().clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._owners if c.sock is not None)

    # ------------------------------------------------------------------ requests
    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: memoryview | bytes | None = None,
        body_file: tuple[str, int] | None = None,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> Response:
        """Send one request. ``body_file`` is (path, size): streamed with sendfile, not read into memory.

        ``cancel`` stops the request within about a second (``Cancelled``), whether it is sending,
        waiting for the answer or (through the ``Response``) reading the body; ``pace(n)`` is called
        before each piece of n bytes goes out and may block (a bandwidth limit).
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        length = len(body) if body is not None else (body_file[1] if body_file else 0)
        conn, route = self._connection(parts.scheme, parts.netloc)
        if route.absolute_form:
            target = f"{parts.scheme}://{parts.netloc}{target}"
        try:
            if conn.sock is None:
                conn.connect()
            _WATCH.watch(conn, cancel)
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            for k, v in route.proxy_headers:
                conn.putheader(k, v)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if method in ("PUT", "POST", "PATCH") or length:
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
            assert conn.sock is not None
            sent_ok = self._send_body(conn.sock, body, body_file, cancel, pace)
            conn.sock.settimeout(self.timeout_s)
            resp = conn.getresponse()
        except _NETWORK_ERRORS as err:
            # no blind re-send: the caller decides (a resumable upload must first ask how far it got)
            self.discard(conn)
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{method} {parts.netloc}{parts.path}: cancelled") from err
            raise ConnectionLostError(f"{method} {parts.netloc}{parts.path}: {err}") from err
        except BaseException:
            self.discard(conn)  # cancelled, a shrunk file, a failing pace: never reuse a half-sent request
            raise
        if not sent_ok:
            self.discard(conn)  # the server answered before taking the whole body
        return Response(resp.status, resp.headers, resp, conn, self, cancel)

    def _send_body(
        self,
        sock: socket.socket,
        body: memoryview | bytes | None,
        body_file: tuple[str, int] | None,
        cancel: threading.Event | None,
        pace: Pace | None,
    ) -> bool:
        """Send the body; False if the peer stopped reading early (its answer may still be readable)."""
        try:
            if body is not None and len(body):
                view = memoryview(body)
                self._send_view(sock, view if view.format == "B" else view.cast("B"), cancel, pace)
            elif body_file is not None and body_file[1]:
                self._send_file(sock, *body_file, cancel, pace)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _send_view(
        self, sock: socket.socket, view: memoryview, cancel: threading.Event | None, pace: Pace | None
    ) -> None:
        piece = (
            _PACED_PIECE if pace is not None else _TLS_PIECE if isinstance(sock, ssl.SSLSocket) else _PIECE
        )
        sock.settimeout(_TICK_S)
        watch = _Progress(sock, self.timeout_s)
        off, total = 0, len(view)
        while off < total:
            end = min(total, off + piece)
            if pace is not None:
                pace(end - off)
                watch.reset()
            while off < end:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("send cancelled")
                try:
                    n = sock.send(view[off:end])
                except TimeoutError:  # no room in the send buffer for a tick
                    watch.check(off, total)
                    continue
                off += n
                watch.reset()

    def _send_file(
        self,
        sock: socket.socket,
        path: str,
        size: int,
        cancel: threading.Event | None,
        pace: Pace | None,
    ) -> None:
        with open(path, "rb") as f:
            if isinstance(sock, ssl.SSLSocket):  # no sendfile through TLS: send it piece by piece
                buf = memoryview(bytearray(min(size, _FILE_PIECE)))
                off = 0
                while off < size:
                    n = f.readinto(buf[: min(len(buf), size - off)])
                    if not n:
                        raise ConnectionLostError(f"sent {off} of {size} bytes: did the file shrink?")
                    self._send_view(sock, buf[:n], cancel, pace)
                    off += n
                return
            self._sendfile(sock, f.fileno(), size, cancel, pace)

    def _sendfile(
        self, sock: socket.socket, fd: int, size: int, cancel: threading.Event | None, pace: Pace | None
    ) -> None:
        piece = _PACED_PIECE if pace is not None else _FILE_PIECE
        sock.settimeout(0)  # os.sendfile on a non-blocking socket; poll() waits for room
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        watch = _Progress(sock, self.timeout_s)
        off = 0
        while off < size:
            end = min(size, off + piece)
            if pace is not None:
                pace(end - off)
                watch.reset()
            while off < end:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("send cancelled")
                try:
                    n = os.sendfile(sock.fileno(), fd, off, end - off)
                except BlockingIOError:
                    if not poller.poll(_TICK_S * 1000):
                        watch.check(off, size)
                    continue
                if n == 0:
                    raise ConnectionLostError(f"sent {off} of {size} bytes: did the file shrink?")
                off += n
                watch.reset()


class _CancelWatch:
    """Shuts down the socket of a request whose cancel event is set, so a receive blocked on a silent
    server (waiting for an answer, or mid-body) returns at once instead of after the timeout.

    One daemon thread for the process, alive only while some request with a cancel event is in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[http.client.HTTPConnection, threading.Event] = {}
        self._thread: threading.Thread | None = None

    def watch(self, conn: http.client.HTTPConnection, cancel: threading.Event | None) -> None:
        with self._lock:
            if cancel is None:
                self._items.pop(conn, None)  # a reused connection must not keep an old request's event
                return
            self._items[conn] = cancel
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-cancel-watch", daemon=True)
                self._thread.start()

    def remove(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._items.pop(conn, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._thread = None
                    return
                fired = [conn for conn, cancel in self._items.items() if cancel.is_set()]
                for conn in fired:
                    del self._items[conn]
            for conn in fired:
                sock = conn.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        # the plain socket's shutdown: SSLSocket.shutdown would also drop its TLS state
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
            time.sleep(_TICK_S)


_WATCH = _CancelWatch()


class _Progress:
    """Tells a slow peer from a dead one: a send that found no room still counts as progress while
    the kernel's send queue shrinks (the peer is acknowledging bytes)."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock, self._timeout = sock, timeout_s
        self.reset()

    def reset(self) -> None:
        self._last = time.monotonic()
        self._queued: int | None = None

    def check(self, sent: int, total: int) -> None:
        queued = _unsent(self._sock)
        now = time.monotonic()
        if queued is not None and self._queued is not None and queued < self._queued:
            self._last = now
        self._queued = queued
        if now - self._last >= self._timeout:
            raise TimeoutError(f"no progress for {self._timeout:g} s after sending {sent} of {total} bytes")


def _unsent(sock: socket.socket) -> int | None:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ)."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", out)[0])


def _peer_closed(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or sent junk) by the server."""
    poller = select.poll()  # not select(): that fails for descriptors >= 1024
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
