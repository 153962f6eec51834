"""A lean keep-alive HTTP/1.1 client for the data path.

Each thread keeps its own connection per host; a body goes out in one ``sendall`` of a memoryview (or
``sendfile`` from a file), so a 64 MiB part costs a handful of syscalls instead of thousands of 16 KiB
writes, and nothing is copied into a new ``bytes``. Socket failures become ``ConnectionLostError`` here,
at the boundary; status codes are left to the protocol adapter.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

from airflow_databricks_transfer import __version__
from airflow_databricks_transfer.engine.errors import ConnectionLostError

USER_AGENT = f"airflow-databricks-transfer/{__version__}"
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


@dataclass
class Response:
    status: int
    headers: Message
    _resp: http.client.HTTPResponse
    _conn: http.client.HTTPConnection
    _pool: HttpPool

    def read(self, limit: int = 1 << 20) -> bytes:
        """Read a (small) body completely; the connection is then reused."""
        try:
            data = self._resp.read(limit)
            if not self._resp.isclosed():
                self._resp.read()  # drain anything above the limit so the connection stays usable
        except _NETWORK_ERRORS as err:
            self._pool.discard(self._conn)
            raise ConnectionLostError(f"connection lost while reading a response: {err}") from err
        return data

    def readinto(self, buf: memoryview) -> int:
        """Read what has arrived, up to ``len(buf)``: at least one byte, 0 at the end of the body.

        A Content-Length body is read with one ``recv`` into ``buf`` (``readinto1``), not filled by a
        loop as ``HTTPResponse.readinto`` does, so the caller sees a stop between reads even on a
        slow link and may ask for many MiB at once.
        """
        resp = self._resp
        try:
            if resp.chunked or resp.length is None or resp.fp is None:
                return resp.readinto(buf)
            if resp.length == 0 or not len(buf):
                if resp.length == 0:
                    resp.read()  # ends the response (reads nothing) so the connection is reused
                return 0
            n = resp.fp.readinto1(buf[: resp.length])
            if n == 0:  # the server closed the connection inside the body
                self._pool.discard(self._conn)
                resp.close()
                return 0
            resp.length -= n
            if resp.length == 0:
                resp.read()  # ends the response (length 0: reads nothing) so the connection is reused
            return n
        except http.client.IncompleteRead as err:
            self._pool.discard(self._conn)
            raise ConnectionLostError(
                f"response body ended early ({len(err.partial)} bytes in the last read)"
            ) from err
        except _NETWORK_ERRORS as err:
            self._pool.discard(self._conn)
            raise ConnectionLostError(f"connection lost while reading a body: {err}") from err

    def close(self) -> None:
        """Give the connection back if the body was read to the end, else drop it."""
        if not self._resp.isclosed() or self._resp.will_close:
            self._pool.discard(self._conn)
        self._resp.close()


class HttpPool:
    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _conns(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = {}
            self._local.conns = conns
        return conns

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._conns()
        conn = conns.get((scheme, netloc))
        if conn is not None and conn.sock is not None and _peer_closed(conn.sock):
            self.discard(conn)  # the server closed it while idle: never send a request into it
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.timeout_s)
            conns[(scheme, netloc)] = conn
        return conn

    def discard(self, conn: http.client.HTTPConnection) -> None:
        conns = self._conns()
        for key, value in list(conns.items()):
            if value is conn:
                del conns[key]
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        for conn in list(self._conns().values()):
            self.discard(conn)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: memoryview | bytes | None = None,
        body_file: tuple[str, int] | None = None,
    ) -> Response:
        """Send one request. ``body_file`` is (path, size): streamed with sendfile, not read into memory."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        length = len(body) if body is not None else (body_file[1] if body_file else 0)
        conn = self._connection(parts.scheme, parts.netloc)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if method in ("PUT", "POST", "PATCH") or length:
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
            assert conn.sock is not None
            sent_ok = self._send_body(conn.sock, body, body_file)
            resp = conn.getresponse()
        except _NETWORK_ERRORS as err:
            # no blind re-send: the caller decides (a resumable upload must first ask how far it got)
            self.discard(conn)
            raise ConnectionLostError(f"{method} {parts.netloc}{parts.path}: {err}") from err
        if not sent_ok:
            self.discard(conn)  # the server answered before taking the whole body
        return Response(resp.status, resp.headers, resp, conn, self)

    @staticmethod
    def _send_body(
        sock: socket.socket, body: memoryview | bytes | None, body_file: tuple[str, int] | None
    ) -> bool:
        """Send the body; False if the peer stopped reading early (its answer may still be readable)."""
        try:
            if body is not None and len(body):
                sock.sendall(body)
            elif body_file is not None and body_file[1]:
                with open(body_file[0], "rb") as f:
                    sent = sock.sendfile(f, 0, body_file[1])
                if sent != body_file[1]:
                    raise ConnectionLostError(f"sent {sent} of {body_file[1]} bytes: did the file shrink?")
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True


def _peer_closed(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed (or sent junk) by the server."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
