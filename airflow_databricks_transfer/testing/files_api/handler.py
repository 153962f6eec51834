"""HTTP wire handling of the Files API emulator: routing, auth, bodies, ranges, faults.

Bodies are streamed between the socket and files on disk (splice(2) in, sendfile(2) out where the
platform has them), so memory stays flat whatever the size of the upload or download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import errno
import fcntl
import io
import json
import math
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlsplit

from airflow_databricks_transfer.testing.faults import FaultRule, RequestInfo
from airflow_databricks_transfer.testing.files_api.errors import (
    ApiError,
    PresignedError,
    bad_request,
    expired_error,
    method_not_allowed,
    missing_length_error,
    not_found,
    permission_mismatch,
    presigned_xml,
    too_large_error,
)
from airflow_databricks_transfer.testing.files_api.requestlog import LoggedRequest
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings
from airflow_databricks_transfer.testing.files_api.state import FileMeta, VolumePath, parse_volume_path

if TYPE_CHECKING:
    from airflow_databricks_transfer.testing.files_api.server import FilesApiServer

FILES_PREFIX = "/api/2.0/fs/files"
DIRS_PREFIX = "/api/2.0/fs/directories"
UC_PREFIX = "/api/2.1/unity-catalog/"
MAX_JSON_BODY = 8 * 1024 * 1024
_PIPE_SIZE = 1024 * 1024
_COPY_CHUNK = 1024 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_thread_local = threading.local()


class _Dropped(Exception):
    """The connection was cut on purpose (fault) or by the client; no response follows.

    ``graceful`` closes with a FIN so the peer reads every byte already sent, then a short body; a reset
    (the default) is what a peer sees when a server dies with unread request bytes.
    """

    def __init__(self, graceful: bool = False) -> None:
        super().__init__()
        self.graceful = graceful


class _BodyTooLarge(Exception):
    """A body without a declared length went past the route's size cap; reading stopped there."""


# Presigned URL bindings. S3/GCS sign one method (and the headers handed out with the URL); an Azure SAS
# grants permissions: r = GET and HEAD, w = PUT (Put Block), d = DELETE. A resumable session URI (legacy
# GCS flow) takes PUT for chunks and status queries and DELETE to cancel, so it binds no method.
_SIGNED_METHOD = {"part": "PUT", "download": "GET", "abort": "DELETE"}
_SAS_PERMISSIONS = {"part": "w", "download": "r", "abort": "d", "resumable": "wd"}
_SAS_METHODS = {"r": ("GET", "HEAD"), "w": ("PUT",), "d": ("DELETE",)}


def _pipe() -> tuple[int, int]:
    pipe: tuple[int, int] | None = getattr(_thread_local, "pipe", None)
    if pipe is None:
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, 1031, _PIPE_SIZE)  # F_SETPIPE_SZ
        pipe = (r, w)
        _thread_local.pipe = pipe
    return pipe


def _discard_pipe() -> None:
    pipe = getattr(_thread_local, "pipe", None)
    if pipe is not None:
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)
        _thread_local.pipe = None


def _buffer() -> memoryview:
    buf: memoryview | None = getattr(_thread_local, "buf", None)
    if buf is None:
        buf = memoryview(bytearray(_COPY_CHUNK))
        _thread_local.buf = buf
    return buf


def _parse_bool(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise bad_request(f"{name} must be true or false")


_EXPIRE_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _parse_expire_time(value: Any, settings: EmulatorSettings, now: float) -> int:
    """Read a request's expire_time on the server's clock ``now``.

    Strict (the default): present, RFC 3339 UTC with second precision and a ``Z`` (what the reference
    and the SDK show) and in the future; anything else is the client's mistake, answered 400 rather
    than minting a URL that is dead on arrival (the SDK would then burn its expiry refreshes on it).
    """
    strict = settings.expire_time_strict
    if value is None:
        if strict:
            raise bad_request("expire_time is required")
        return int(now + 3600)
    if not isinstance(value, str):
        raise bad_request("expire_time must be an RFC 3339 timestamp string")
    if strict and not _EXPIRE_TIME_RE.match(value):
        raise bad_request(f"expire_time must look like YYYY-MM-DDTHH:MM:SSZ (UTC): {value!r}")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"expire_time is not an RFC 3339 timestamp: {value!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    if strict and ts.timestamp() <= now:
        raise bad_request(f"expire_time {value} is not in the future")
    # signatures carry whole seconds: round the cap up so a short lifetime is never born expired
    return math.ceil(min(ts.timestamp(), now + settings.max_url_ttl_s))


def _decode_request_path(raw: str) -> str:
    """Percent-decode a Files API path strictly: no encoded separator, valid UTF-8 only.

    ``unquote`` would turn ``%2F`` into a separator (``a%2Fb`` names a file ``b`` in folder ``a``) and
    invalid UTF-8 into U+FFFD (two different byte names aliasing one file); a server that stores names
    as UTF-8 strings refuses both.
    """
    if re.search(r"%2[fF]", raw):
        raise bad_request("A path component may not contain an encoded '/' (%2F).")
    try:
        # http.server decoded the request line as ISO-8859-1: these are the bytes that came in
        return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise bad_request("The path is not valid UTF-8 after percent-decoding.") from None


class FilesApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two sends; don't wait for delayed ACKs
    server_version = "DatabricksFilesEmulator/1.0"
    timeout = 300  # idle seconds before a silent client is dropped
    server: FilesApiServer

    # ------------------------------------------------------------------ plumbing
    def finish(self) -> None:
        try:
            super().finish()
        finally:
            _discard_pipe()  # one thread per connection: its pipe must not outlive it

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _now(self) -> float:
        """The server's clock: the store's (real time, or frozen by a test) plus the configured skew."""
        return self.server.store.clock_ns() / 1e9 + self.server.settings.clock_offset_s

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, on the server's (possibly skewed or frozen) clock, like Last-Modified."""
        return email.utils.formatdate(self._now() if timestamp is None else timestamp, usegmt=True)

    def _on_server_clock(self, meta: FileMeta) -> FileMeta:
        """A file's metadata with its stamp moved onto the server's clock (files are stamped in real time)."""
        offset = self.server.settings.clock_offset_s
        return dataclasses.replace(meta, mtime_ns=meta.mtime_ns + offset * 1_000_000_000) if offset else meta

    def _require_proxy_endpoint(self) -> None:
        """A storage-proxy part PUT is served only where /fs/endpoints advertises it on this host.

        A workspace without that endpoint has no such flow: its Files API takes the extra query
        parameters as invalid for a file PUT (400 INVALID_PARAMETER_VALUE, as for a bad ``overwrite``),
        which the SDK treats as "walk to the next endpoint" before commit, and never stores the bytes.
        """
        host = (self.headers.get("Host") or "").lower()
        for ep in self.server.settings.endpoints or ():
            if (
                ep.get("api") == "FILES_API"
                and ep.get("api_version") == "2.0"
                and ep.get("multipart_upload_supported") is True
                and str(ep.get("hostname", "")).lower() == host
            ):
                return
        raise bad_request(
            "upload_type=multipart part uploads are not supported on this host "
            "(GET /api/2.0/fs/endpoints lists no FILES_API 2.0 endpoint with multipart here)."
        )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        self.method = method
        self.started = time.perf_counter()
        split = urlsplit(self.path)
        self.raw_path = split.path
        self.query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.route = "unknown"
        self.vpath = ""
        self.part_number: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.fault: FaultRule | None = None
        self.dropped = False
        self.body_consumed = False
        self.admitted = False
        self.linger = False  # answer given before the whole body was read: close gracefully
        logged = not self.raw_path.startswith("/_emulator/")
        if logged:
            self.server.log.begin()
        try:
            handler = self._dispatch()
            self._admit()
            if not self.route.startswith("control."):
                self.fault = self.server.faults.check(
                    RequestInfo(self.route, method, self.vpath, self.part_number)
                )
            if self.fault is not None:
                self._apply_fault_before(self.fault)
            handler()
        except _Dropped as cut:
            self._drop(reset=not cut.graceful)
        except ApiError as err:
            self._send_api_error(err)
        except PresignedError as err:
            self._send_xml(err.status, err.xml, err.retry_after_s)
        except (ConnectionError, TimeoutError, OSError) as err:
            if isinstance(err, OSError) and err.errno == 28:  # ENOSPC
                self._send_api_error(ApiError(507, "RESOURCE_EXHAUSTED", "Emulator storage is full."))
            elif isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:  # the emulator's root + path
                self._send_api_error(bad_request("The path is too long."))
            else:
                self._drop()
        except Exception as err:
            self._send_api_error(ApiError(500, "INTERNAL_ERROR", f"emulator bug: {err!r}"))
            raise
        finally:
            if self.admitted:
                self.server.limiter.release()
            if self.linger and not self.dropped:
                self._linger_close()
            if logged:
                self.server.log.record(
                    LoggedRequest(
                        seq=0,
                        time=time.time(),
                        method=method,
                        route=self.route,
                        path=self.vpath,
                        part_number=self.part_number,
                        status=self.status,
                        bytes_in=self.bytes_in,
                        bytes_out=self.bytes_out,
                        duration_s=time.perf_counter() - self.started,
                        range=self.headers.get("Range") or self.headers.get("Content-Range"),
                        fault=self.fault.id if self.fault else None,
                        dropped=self.dropped,
                    )
                )

    def _admit(self) -> None:
        """Apply the workspace's request limits to its API routes (not presigned URLs, not /_emulator/)."""
        if not self.raw_path.startswith("/api/"):
            return
        settings = self.server.settings
        refused = self.server.limiter.admit(settings.rate_limit_concurrent, settings.rate_limit_per_s)
        if refused is not None:
            raise ApiError(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                f"Request limit exceeded for this workspace: {refused}.",
                retry_after_s=settings.rate_limit_retry_after_s,
            )
        self.admitted = True

    def _drop(self, reset: bool = True) -> None:
        """Cut the connection the way a crashed proxy or a network blip would."""
        self.dropped = True
        self.close_connection = True
        if reset:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _apply_fault_before(self, fault: FaultRule) -> None:
        if fault.delay_s > 0:
            time.sleep(fault.delay_s)
        if fault.phase != "before":
            return
        if fault.expire:
            if not self.route.startswith("presigned."):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", "expire faults apply to presigned URLs only")
            raise expired_error(self.server.settings.cloud)
        if fault.status is not None:
            raise self._fault_error(fault)
        if fault.cut_after_bytes is not None and self._request_body_length() != 0:
            self._consume_and_cut(fault.cut_after_bytes)

    def _fault_error(self, fault: FaultRule) -> ApiError | PresignedError:
        assert fault.status is not None
        if self.route.startswith("presigned."):
            # a rule's Retry-After goes out on the data plane too (a storage front end or proxy's 503)
            if fault.body is not None:
                return PresignedError(fault.status, fault.body, retry_after_s=fault.retry_after_s)
            return presigned_xml(
                fault.status,
                fault.error_code or "InternalError",
                fault.message or "injected",
                retry_after_s=fault.retry_after_s,
            )
        code = fault.error_code or {
            429: "REQUEST_LIMIT_EXCEEDED",
            503: "TEMPORARILY_UNAVAILABLE",
            500: "INTERNAL_ERROR",
            404: "NOT_FOUND",
        }.get(fault.status, "INJECTED_FAULT")
        return ApiError(
            fault.status,
            code,
            fault.message or f"injected fault {fault.id}",
            retry_after_s=fault.retry_after_s,
        )

    def _after_state_change(self) -> None:
        """Apply a phase="after" fault once the request's state change is done."""
        fault = self.fault
        if fault is None or fault.phase != "after":
            return
        if fault.status is not None:
            raise self._fault_error(fault)
        if fault.cut_after_bytes is not None:
            raise _Dropped()

    def _response_cut(self) -> int | None:
        fault = self.fault
        if fault is None or fault.cut_after_bytes is None:
            return None
        if fault.phase == "before" and self._request_body_length() != 0:
            return None  # that rule cut the request body instead
        return fault.cut_after_bytes

    # ------------------------------------------------------------------ responses
    def _start(self, status: int, headers: dict[str, str], length: int, reason: str | None = None) -> None:
        self.status = status
        self.send_response(status, reason)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_bytes(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self._finish_request_body()
        headers = {"Content-Type": content_type, **(extra or {})}
        self._start(status, headers, len(body))
        if self.method != "HEAD" and body:
            self.wfile.write(body)
            self.bytes_out += len(body)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _send_empty(
        self, status: int = 200, extra: dict[str, str] | None = None, reason: str | None = None
    ) -> None:
        self._finish_request_body()
        self._start(status, extra or {}, 0, reason)

    @staticmethod
    def _retry_after_header(retry_after_s: float | None) -> dict[str, str]:
        return {} if retry_after_s is None else {"Retry-After": str(max(0, round(retry_after_s)))}

    def _send_api_error(self, err: ApiError) -> None:
        extra = self._retry_after_header(err.retry_after_s)
        if self.method == "HEAD":
            self._send_empty(err.status, extra)
            return
        self._send_bytes(err.status, json.dumps(err.body()).encode(), "application/json", extra)

    def _send_xml(self, status: int, xml: str, retry_after_s: float | None = None) -> None:
        self._send_bytes(status, xml.encode(), "application/xml", self._retry_after_header(retry_after_s))

    # ------------------------------------------------------------------ request bodies
    def _request_body_length(self) -> int | None:
        """Content-Length, or None for a chunked body."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise bad_request("Invalid Content-Length") from None
        if n < 0:
            raise bad_request("Invalid Content-Length")
        return n

    def _finish_request_body(self) -> None:
        """Before answering, drain a small unread body or mark the connection to close."""
        if self.body_consumed or self.dropped:
            return
        self.body_consumed = True
        length = self._request_body_length()
        if length == 0:
            return
        if length is not None and length <= 1024 * 1024:
            with contextlib.suppress(OSError):
                self.bytes_in += len(self.rfile.read(length))
            return
        self.close_connection = True

    def _read_json(self) -> dict[str, Any]:
        raw = self._read_small_body()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "MALFORMED_REQUEST", "Could not parse request body as JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "MALFORMED_REQUEST", "Request body must be a JSON object.")
        return data

    def _read_small_body(self) -> bytes:
        length = self._request_body_length()
        self.body_consumed = True
        if length is None:
            chunks = list(self._iter_chunked())
            data = b"".join(chunks)
        else:
            if length > MAX_JSON_BODY:
                self.close_connection = True
                raise bad_request("Request body too large")
            data = self.rfile.read(length)
            if len(data) < length:
                raise _Dropped()
        self.bytes_in += len(data)
        return data

    def _iter_chunked(self, cap: int | None = None) -> Any:
        """The chunks of a chunked body; past ``cap`` bytes it raises before reading the chunk."""
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise bad_request("Malformed chunked body") from None
            total += size
            if cap is not None and total > cap:
                raise _BodyTooLarge()
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = self.rfile.read(size)
            self.rfile.readline(3)
            if len(data) < size:
                raise _Dropped()
            yield data

    def _consume_and_cut(self, n: int) -> None:
        """Read n body bytes (counted as received) and then reset the connection."""
        self.body_consumed = True
        length = self._request_body_length()
        remaining = n if length is None else min(n, length)
        buf = _buffer()
        while remaining > 0:
            got = self.rfile.readinto(buf[: min(remaining, len(buf))])
            if not got:
                break
            self.bytes_in += got
            remaining -= got
        raise _Dropped()

    def _recv_body_to_fd(self, fd: int, offset: int = 0, cap: int | None = None) -> int:
        """Stream the request body into ``fd`` at ``offset``; returns the number of bytes written.

        ``cap`` bounds a chunked body by the bytes actually received (a declared length is checked by
        the caller before reading).
        """
        length = self._request_body_length()
        self.body_consumed = True
        if length is None:
            written = 0
            for chunk in self._iter_chunked(cap):
                os.pwrite(fd, chunk, offset + written)
                written += len(chunk)
                self.bytes_in += len(chunk)
            return written
        done = 0
        # bytes the header parser already pulled into the buffered reader come first
        if length:
            buffered = cast(io.BufferedReader, self.rfile).peek(1)[:length]
            if buffered:
                data = self.rfile.read(len(buffered))
                os.pwrite(fd, data, offset)
                done = len(data)
                self.bytes_in += done
        if done < length:
            if self.server.settings.use_splice and hasattr(os, "splice"):
                done += self._splice_in(fd, offset + done, length - done)
            else:
                done += self._copy_in(fd, offset + done, length - done)
        return done

    def _wait_readable(self) -> None:
        ready, _, _ = select.select([self.connection], [], [], self.timeout)
        if not ready:
            raise TimeoutError("client stalled while sending the body")

    def _splice_in(self, fd: int, offset: int, todo: int) -> int:
        sock = self.connection.fileno()
        r, w = _pipe()
        moved = 0
        try:
            while moved < todo:
                try:
                    n = os.splice(sock, w, min(todo - moved, _PIPE_SIZE))
                except BlockingIOError:
                    self._wait_readable()
                    continue
                if n == 0:
                    raise _Dropped()
                out = 0
                while out < n:
                    out += os.splice(r, fd, n - out, offset_dst=offset + moved + out)
                moved += n
                self.bytes_in += n
        except BaseException:
            _discard_pipe()  # it may still hold bytes of this request
            raise
        return moved

    def _copy_in(self, fd: int, offset: int, todo: int) -> int:
        buf = _buffer()
        moved = 0
        while moved < todo:
            try:
                n = self.connection.recv_into(buf, min(len(buf), todo - moved))
            except BlockingIOError:
                self._wait_readable()
                continue
            if n == 0:
                raise _Dropped()
            os.pwrite(fd, buf[:n], offset + moved)
            moved += n
            self.bytes_in += n
        return moved

    def _receive_to_temp(self, cap: int | None = None) -> tuple[Any, int]:
        tmp = self.server.store.new_temp()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            n = self._recv_body_to_fd(fd, cap=cap)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp, n

    # ------------------------------------------------------------------ routing
    def _dispatch(self) -> Callable[[], None]:
        p, m = self.raw_path, self.method
        if p.startswith("/_emulator/"):
            self.route = "control." + p[len("/_emulator/") :]
            return self._control
        if p.startswith("/_presigned/"):
            return self._presigned(p[len("/_presigned/") :])
        if p == "/.well-known/databricks-config":
            self.route = "well_known"
            return self._well_known
        self._authenticate()
        if p.startswith(FILES_PREFIX + "/"):
            self.vpath = _decode_request_path(p[len(FILES_PREFIX) :])
            self.vpath = "/" + self.vpath.lstrip("/")
            if self.vpath.endswith("/"):
                self.route = f"files.{m.lower()}"
                raise bad_request(f"A file path may not end with '/': {self.vpath!r}")
            return self._files_route()
        if p.startswith(DIRS_PREFIX + "/"):
            self.vpath = "/" + _decode_request_path(p[len(DIRS_PREFIX) :]).lstrip("/")
            routes = {
                "PUT": self._dir_create,
                "HEAD": self._dir_head,
                "GET": self._dir_list,
                "DELETE": self._dir_delete,
            }
            self.route = f"directories.{m.lower()}"
            return self._method(routes)
        fs_routes: dict[str, Callable[[], None]] = {
            "/api/2.0/fs/create-upload-part-urls": self._create_upload_part_urls,
            "/api/2.0/fs/create-download-url": self._create_download_url,
            "/api/2.0/fs/create-resumable-upload-url": self._create_resumable_upload_url,
            "/api/2.0/fs/create-abort-upload-url": self._create_abort_upload_url,
        }
        if p in fs_routes:
            self.route = "fs." + p.rsplit("/", 1)[1].replace("-", "_")
            return self._method({"POST": fs_routes[p]})
        if p == "/api/2.0/fs/endpoints":
            self.route = "fs.endpoints"
            return self._method({"GET": self._endpoints})
        if p.startswith(UC_PREFIX):
            return self._uc_route(p[len(UC_PREFIX) :])
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{m} {p}'")

    def _method(self, routes: dict[str, Callable[[], None]]) -> Callable[[], None]:
        fn = routes.get(self.method)
        if fn is None:
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"{self.method} is not allowed on {self.raw_path}")
        return fn

    def _authenticate(self) -> None:
        settings = self.server.settings
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise ApiError(
                401, "UNAUTHENTICATED", "Credential was not sent or was of an unsupported type for this API."
            )
        token = auth[len("Bearer ") :].strip()
        if token in settings.tokens:
            pass
        elif token in settings.read_only_tokens:
            if self.method not in ("GET", "HEAD"):
                raise ApiError(403, "PERMISSION_DENIED", "This token may only read.")
        else:
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
        wsid = self.headers.get("X-Databricks-Workspace-Id")
        if wsid is not None and settings.workspace_id is not None and wsid != settings.workspace_id:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "X-Databricks-Workspace-Id does not match.")

    def _vp(self) -> VolumePath:
        return parse_volume_path(self.vpath)

    def _well_known(self) -> None:
        settings = self.server.settings
        payload: dict[str, Any] = {"oidc_endpoint": f"{self.server.base_url}/oidc"}
        if settings.workspace_id:
            payload["workspace_id"] = settings.workspace_id
        self._send_json(200, payload)

    # ------------------------------------------------------------------ /fs/files
    def _files_route(self) -> Callable[[], None]:
        q = self.query
        if self.method == "POST":
            action = q.get("action")
            actions = {
                "initiate-upload": self._initiate_upload,
                "complete-upload": self._complete_upload,
                "abort-upload": self._abort_upload,
            }
            if action not in actions:
                self.route = "files.post"
                raise bad_request(f"Unknown or missing action: {action!r}")
            self.route = "files." + action.replace("-", "_")
            return actions[action]
        if self.method == "PUT" and "session_token" in q:
            self.route = "files.proxy_" + (q.get("upload_type") or "part")
            if q.get("upload_type") == "resumable":
                return self._proxy_resumable_put
            self.part_number = self._int_param("part_number")
            return self._proxy_part_put
        self.route = f"files.{self.method.lower()}"
        return self._method(
            {
                "PUT": self._file_put,
                "GET": self._file_get,
                "HEAD": self._file_get,
                "DELETE": self._file_delete,
            }
        )

    def _int_param(self, name: str, source: dict[str, Any] | None = None) -> int:
        src = self.query if source is None else source
        value = src.get(name)
        if isinstance(value, bool):
            raise bad_request(f"{name} must be an integer")
        try:
            return int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise bad_request(f"{name} must be an integer, got {value!r}") from None

    def _file_put(self) -> None:
        vp = self._vp()
        overwrite = _parse_bool(self.query.get("overwrite"), "overwrite")
        store = self.server.store
        store.check_writable(vp, overwrite)
        self._require_workspace_length()
        length = self._request_body_length()
        cap = self.server.settings.single_shot_max_bytes
        if length is not None and length > cap:
            raise self._single_shot_too_large(cap)
        try:
            tmp, _ = self._receive_to_temp(cap)
        except _BodyTooLarge:
            raise self._single_shot_too_large(cap) from None
        store.commit_file(vp, tmp, overwrite)
        self._after_state_change()
        self._send_empty(204)

    def _file_delete(self) -> None:
        self.server.store.delete_file(self._vp())
        self._after_state_change()
        self._send_empty(204)

    def _file_get(self) -> None:
        meta, f = self.server.store.open_file(self._vp())
        with f:
            self._serve_file(meta, f, presigned=False)

    def _serve_file(self, meta: FileMeta, f: Any, presigned: bool) -> None:
        meta = self._on_server_clock(meta)
        failure = self._precondition_failure(
            meta, honour_if_match=presigned or self.server.settings.files_api_etag
        )
        if failure:
            if presigned:
                raise presigned_xml(412, "PreconditionFailed", failure)
            raise ApiError(412, "PRECONDITION_FAILED", failure)
        start, length, status = 0, meta.size, 200
        headers = {
            "Content-Type": meta.content_type,
            "Last-Modified": meta.last_modified,
            "ETag": meta.etag,
            "Accept-Ranges": "bytes",
        }
        if not presigned and not self.server.settings.files_api_etag:
            del headers["ETag"]
        rng = self.headers.get("Range")
        if rng:
            parsed = _RANGE_RE.match(rng.strip())
            if parsed:
                first, last = parsed.groups()
                if first == "" and last == "":
                    parsed = None
                elif first == "":
                    if int(last) == 0 or meta.size == 0:
                        self._finish_request_body()
                        self._start(416, {"Content-Range": f"bytes */{meta.size}"}, 0)
                        return
                    start = max(0, meta.size - int(last))
                    end = meta.size - 1
                else:
                    start = int(first)
                    end = min(int(last), meta.size - 1) if last else meta.size - 1
                    if start >= meta.size or (last and int(last) < start):
                        self._finish_request_body()
                        self._start(416, {"Content-Range": f"bytes */{meta.size}"}, 0)
                        return
                if parsed:
                    status = 206
                    length = end - start + 1
                    headers["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
        self._finish_request_body()
        self._after_state_change_for_reads()
        self._start(status, headers, length)
        if self.method == "HEAD" or length == 0:
            return
        cut = self._response_cut()
        to_send = length if cut is None else min(cut, length)
        sent = self.connection.sendfile(f, start, to_send) if to_send else 0
        self.bytes_out += sent
        if cut is not None and cut < length:
            raise _Dropped(graceful=True)

    def _after_state_change_for_reads(self) -> None:
        fault = self.fault
        if fault is not None and fault.phase == "after" and fault.status is not None:
            raise self._fault_error(fault)

    def _precondition_failure(self, meta: FileMeta, honour_if_match: bool = True) -> str | None:
        if_match = self.headers.get("If-Match")
        if if_match is not None and honour_if_match:
            tags = [t.strip() for t in if_match.split(",")]
            if "*" not in tags and meta.etag not in tags and meta.etag.strip('"') not in tags:
                return "If-Match precondition failed: the file has changed."
        ius = self.headers.get("If-Unmodified-Since")
        if ius is not None:
            try:
                since = email.utils.parsedate_to_datetime(ius).timestamp()
            except (TypeError, ValueError):
                since = None
            if since is not None and meta.mtime_s > since:
                return "If-Unmodified-Since precondition failed: the file has changed."
        return None

    # ------------------------------------------------------------------ multipart control
    def _initiate_upload(self) -> None:
        vp = self._vp()
        overwrite = _parse_bool(self.query.get("overwrite"), "overwrite")
        settings = self.server.settings
        if not settings.presigned_enabled and settings.endpoints is None:
            raise self._presigned_disabled()
        kind = settings.upload_protocol
        session = self.server.store.create_session(vp, overwrite, kind)
        self._after_state_change()
        key = "multipart_upload" if kind == "multipart" else "resumable_upload"
        self._send_json(200, {key: {"session_token": session.token}})

    def _presigned_disabled(self) -> ApiError:
        return ApiError(
            403,
            "PERMISSION_DENIED",
            "Presigned URLs API is not enabled",
            reason="FILES_API_API_IS_NOT_ENABLED",
            metadata={"api_name": "Presigned URLs"},
        )

    def _complete_upload(self) -> None:
        token = self.query.get("session_token")
        if not token:
            raise bad_request("session_token is required")
        body = self._read_json()
        parts = body.get("parts")
        if not isinstance(parts, list):
            raise bad_request("parts must be a list of {part_number, etag}")
        listed: list[tuple[int, str]] = []
        for item in parts:
            if not isinstance(item, dict) or "part_number" not in item:
                raise bad_request("each part needs a part_number and an etag")
            etag = item.get("etag", "")
            if not isinstance(etag, str):
                raise bad_request("etag must be a string")
            listed.append((self._int_param("part_number", item), etag))
        self.server.store.complete_multipart(token, self.vpath, listed)
        self._after_state_change()
        self._send_json(200, {})

    def _abort_upload(self) -> None:
        token = self.query.get("session_token")
        if not token:
            raise bad_request("session_token is required")
        self.server.store.abort(token, self.vpath)
        self._after_state_change()
        self._send_empty(200)

    def _create_upload_part_urls(self) -> None:
        body = self._read_json()
        settings = self.server.settings
        if not settings.presigned_enabled:
            raise self._presigned_disabled()
        for key in ("path", "session_token", "start_part_number", "count"):
            if key not in body:
                raise bad_request(f"{key} is required")
        session = self.server.store.session(str(body["session_token"]), str(body["path"]))
        self.vpath = session.path
        if session.kind != "multipart":
            raise bad_request("This session is not a multipart upload.")
        start = self._int_param("start_part_number", body)
        count = self._int_param("count", body)
        self.server.store.check_part_number(start)
        if count < 1:
            raise bad_request("count must be >= 1")
        expires = _parse_expire_time(body.get("expire_time"), settings, self._now())
        last = min(start + count - 1, settings.max_parts)
        headers = [{"name": str(k), "value": str(v)} for k, v in settings.presigned_part_headers]
        urls = [
            {
                "part_number": n,
                "url": self._mint("part", {"t": session.token, "n": str(n)}, expires, headers),
                "headers": headers,
            }
            for n in range(start, last + 1)
        ]
        self._after_state_change()
        self._send_json(200, {"upload_part_urls": urls})

    def _create_download_url(self) -> None:
        self._finish_request_body()
        settings = self.server.settings
        if not settings.presigned_enabled:
            raise self._presigned_disabled()
        path = self._strict_query_value("path")
        if not path:
            raise bad_request("path is required")
        self.vpath = path
        vp = parse_volume_path(path)
        self.server.store.file_meta(vp)
        expires = _parse_expire_time(self.query.get("expire_time"), settings, self._now())
        url = self._mint("download", {"p": vp.normalized}, expires, [])
        self._after_state_change()
        self._send_json(200, {"url": url, "headers": []})

    def _strict_query_value(self, name: str) -> str | None:
        """A query value decoded without replacing invalid UTF-8 (which would alias another name)."""
        try:
            pairs = parse_qsl(urlsplit(self.path).query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise bad_request(f"{name} is not valid UTF-8 after percent-decoding.") from None
        return dict(pairs).get(name)

    def _create_resumable_upload_url(self) -> None:
        body = self._read_json()
        if not self.server.settings.presigned_enabled:
            raise self._presigned_disabled()
        for key in ("path", "session_token"):
            if key not in body:
                raise bad_request(f"{key} is required")
        session = self.server.store.session(str(body["session_token"]), str(body["path"]))
        self.vpath = session.path
        if session.kind != "resumable":
            raise bad_request("This session is not a resumable upload.")
        expires = int(self._now() + self.server.settings.session_ttl_s)
        url = self._mint("resumable", {"t": session.token}, expires, [])
        self._after_state_change()
        self._send_json(200, {"resumable_upload_url": {"url": url, "headers": []}})

    def _create_abort_upload_url(self) -> None:
        body = self._read_json()
        for key in ("path", "session_token"):
            if key not in body:
                raise bad_request(f"{key} is required")
        session = self.server.store.session(str(body["session_token"]), str(body["path"]))
        self.vpath = session.path
        expires = _parse_expire_time(body.get("expire_time"), self.server.settings, self._now())
        url = self._mint("abort", {"t": session.token}, expires, [])
        self._after_state_change()
        self._send_json(200, {"abort_upload_url": {"url": url, "headers": []}})

    def _endpoints(self) -> None:
        endpoints = self.server.settings.endpoints
        if endpoints is None:
            raise ApiError(404, "ENDPOINT_NOT_FOUND", "No API found for 'GET /api/2.0/fs/endpoints'")
        self._send_json(200, {"endpoints": list(endpoints)})

    # ------------------------------------------------------------------ part bodies
    def _store_part(self, token: str, number: int) -> str:
        store = self.server.store
        store.check_part_number(number)
        session = store.session(token)
        if session.kind != "multipart":
            raise bad_request("This session is not a multipart upload.")
        length = self._request_body_length()
        if length is not None and length > self.server.settings.max_part_size_bytes:
            self.close_connection = True
            raise bad_request(
                f"Part exceeds the maximum part size of {self.server.settings.max_part_size_bytes}"
            )
        slot = store.open_part_slot(token, number, length)
        flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if slot.where == "file" else 0)
        fd = os.open(slot.path, flags, 0o644)
        try:
            size = self._recv_body_to_fd(fd, slot.offset, self.server.settings.max_part_size_bytes)
        except BaseException:
            store.abandon_part_slot(slot)
            raise
        finally:
            os.close(fd)
        return store.commit_part(token, number, slot, size).etag

    def _proxy_part_put(self) -> None:
        assert self.part_number is not None
        self._require_proxy_endpoint()
        session = self.server.store.session(self.query["session_token"], self.vpath)
        self.vpath = session.path
        self._require_workspace_length()
        try:
            etag = self._store_part(session.token, self.part_number)
        except _BodyTooLarge:
            self.close_connection = self.linger = True
            raise bad_request(
                f"Part exceeds the maximum part size of {self.server.settings.max_part_size_bytes}"
            ) from None
        self._after_state_change()
        self._send_empty(200, {"ETag": etag})

    def _proxy_resumable_put(self) -> None:
        session = self.server.store.session(self.query["session_token"], self.vpath)
        self.vpath = session.path
        self._require_workspace_length()
        self._resumable_put(session.token)

    # ------------------------------------------------------------------ presigned data plane
    def _presigned(self, op: str) -> Callable[[], None]:
        self.route = f"presigned.{op}"
        if "Authorization" in self.headers:
            raise presigned_xml(400, "InvalidArgument", "Only one auth mechanism allowed")
        fields = self.server.signer.verify(
            op,
            self.query,
            self.server.settings.cloud,
            now=self._now(),
            method=self.method,
            headers=self.headers,
        )
        self._check_sas_permission(fields)
        store = self.server.store
        if op == "download":
            self.vpath = fields["p"]
            return self._presigned_method({"GET": self._presigned_get, "HEAD": self._presigned_get})
        token = fields["t"]
        try:
            session = store.session(token)
            self.vpath = session.path
        except ApiError:
            session = None
        if op == "part":
            self.part_number = int(fields["n"])
            return self._presigned_method({"PUT": lambda: self._presigned_part_put(token)})
        if op == "resumable":
            return self._presigned_method(
                {
                    "PUT": lambda: self._presigned_resumable_put(token),
                    "DELETE": lambda: self._abort_by_url(token),
                }
            )
        if op == "abort":
            return self._presigned_method({"DELETE": lambda: self._abort_by_url(token)})
        raise presigned_xml(404, "NoSuchKey", "Unknown presigned operation")

    def _no_such_upload(self) -> PresignedError:
        return presigned_xml(404, "NoSuchUpload", "The specified upload does not exist or has expired.")

    def _presigned_part_put(self, token: str) -> None:
        assert self.part_number is not None
        cloud = self.server.settings.cloud
        self._require_store_length()
        length = self._request_body_length()
        limit = self.server.settings.max_part_size_bytes
        if length is not None and length > limit:
            self.close_connection = self.linger = True
            raise too_large_error(cloud, limit)
        try:
            etag = self._store_part(token, self.part_number)
        except ApiError as err:
            if err.status == 404:
                raise self._no_such_upload() from None
            raise presigned_xml(err.status, "InvalidArgument", err.message) from None
        self._after_state_change()
        self._send_part_answer(etag)

    def _presigned_get(self) -> None:
        try:
            meta, f = self.server.store.open_file(parse_volume_path(self.vpath))
        except ApiError:
            raise presigned_xml(404, "NoSuchKey", "The specified key does not exist.") from None
        with f:
            self._serve_file(meta, f, presigned=True)

    def _abort_by_url(self, token: str) -> None:
        try:
            self.server.store.abort(token)
        except ApiError:
            raise self._no_such_upload() from None
        self._after_state_change()
        self._send_empty(200)

    def _resumable_put(self, token: str) -> None:
        """Legacy GCS-style resumable chunk: Content-Range, 308 with the confirmed Range, 200 when done."""
        store = self.server.store
        try:
            session = store.session(token)
        except ApiError:
            raise self._no_such_upload() from None
        if session.kind != "resumable":
            raise presigned_xml(400, "InvalidArgument", "This session is not a resumable upload.")
        header = self.headers.get("Content-Range", "")
        m = _CONTENT_RANGE_RE.match(header.strip())
        if not m:
            raise presigned_xml(400, "InvalidArgument", f"Invalid Content-Range: {header!r}")
        first, last, total_s = m.groups()
        total = None if total_s == "*" else int(total_s)
        confirmed = store.resumable_confirmed(token)
        if first is not None:
            start, end = int(first), int(last)
            length = self._request_body_length()
            if end < start or (length is not None and length != end - start + 1):
                raise presigned_xml(400, "InvalidArgument", "Content-Range does not match the body length.")
            if start > confirmed:
                raise presigned_xml(
                    400,
                    "InvalidArgument",
                    f"Chunk starts at {start} but only {confirmed} bytes are persisted.",
                )
            data = store.resumable_data(token)
            fd = os.open(data, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                self._recv_body_to_fd(fd, start, end - start + 1)
            except _BodyTooLarge:
                self.close_connection = self.linger = True
                raise presigned_xml(
                    400, "InvalidArgument", "Content-Range does not match the body length."
                ) from None
            finally:
                os.close(fd)
            confirmed = store.resumable_confirmed(token)
        else:
            self._finish_request_body()
        if total is not None and confirmed > total:
            raise presigned_xml(400, "InvalidArgument", "More bytes were sent than the declared total.")
        if total is not None and confirmed == total:
            try:
                store.finish_resumable(token)
            except ApiError as err:
                raise presigned_xml(err.status, "PreconditionFailed", err.message) from None
            self._after_state_change()
            self._send_empty(200)
            return
        self._after_state_change()
        headers = {"Range": f"bytes=0-{confirmed - 1}"} if confirmed else {}
        self._send_empty(308, headers, reason="Resume Incomplete")

    # ------------------------------------------------------------------ strict data plane
    def _has_declared_length(self) -> bool:
        """A Content-Length header and no chunked encoding: what object stores require on a PUT."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return False
        return self.headers.get("Content-Length") is not None

    def _refuse_unlengthed(self) -> None:
        # a chunked body we will not read: close after answering, gracefully so the client sees the answer
        self.close_connection = True
        self.linger = self._request_body_length() is None

    def _require_store_length(self) -> None:
        """Presigned object-store PUTs: S3, GCS and Azure answer 411 to a body without a length."""
        if not self._has_declared_length():
            self._refuse_unlengthed()
            raise missing_length_error(self.server.settings.cloud)

    def _require_workspace_length(self) -> None:
        """Workspace-host data PUTs: 411 unless the (unverified) kinder reading is configured."""
        if self.server.settings.workspace_put_requires_length and not self._has_declared_length():
            self._refuse_unlengthed()
            raise ApiError(
                411,
                "INVALID_PARAMETER_VALUE",
                "Content-Length is required: send the body with a declared length, not chunked.",
            )

    def _single_shot_too_large(self, cap: int) -> ApiError:
        """413, with an error_code no client maps to a retryable throttle (RESOURCE_EXHAUSTED would be)."""
        self.close_connection = self.linger = True
        return ApiError(
            413,
            "INVALID_PARAMETER_VALUE",
            f"Single-shot uploads are limited to {cap} bytes; use a multipart upload.",
        )

    def _linger_close(self) -> None:
        """After answering before the whole body was read: send FIN, then discard what the client still
        sends for a moment, so it reads the answer instead of a reset (a lingering close, as httpd does).
        Nothing read here is stored or counted as received."""
        self.close_connection = True
        with contextlib.suppress(OSError, ValueError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + 2.0
            left = 16 * 1024 * 1024
            while left > 0 and time.monotonic() < deadline:
                data = self.connection.recv(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)

    def _presigned_resumable_put(self, token: str) -> None:
        self._require_store_length()
        self._resumable_put(token)

    def _send_part_answer(self, etag: str) -> None:
        """S3 and GCS (XML API) answer a part with 200 and its quoted ETag; an Azure Put Block with 201
        and no ETag at all (complete-upload then takes "" for that part)."""
        if self.server.settings.cloud == "AZURE":
            self._send_empty(201, {"x-ms-request-server-encrypted": "true"}, reason="Created")
            return
        self._send_empty(200, {"ETag": etag})

    def _check_sas_permission(self, fields: dict[str, str]) -> None:
        """An Azure SAS grants permissions, not one method: refuse a method no granted permission allows."""
        perms = fields.get("sp")
        if perms is None:
            return
        allowed = {m for p in perms for m in _SAS_METHODS.get(p, ())}
        if self.method not in allowed:
            raise permission_mismatch()

    def _presigned_method(self, routes: dict[str, Callable[[], None]]) -> Callable[[], None]:
        """Like ``_method`` but a storage answer (XML), never the workspace's JSON 405."""
        fn = routes.get(self.method)
        if fn is None:
            raise method_not_allowed()
        return fn

    def _mint(self, op: str, fields: dict[str, str], expires: int, headers: list[dict[str, str]]) -> str:
        """A presigned URL bound as the configured cloud binds it (see ``_SIGNED_METHOD``)."""
        signer, base = self.server.signer, self.server.data_plane_url
        if self.server.settings.cloud == "AZURE":
            return signer.url(base, op, {**fields, "sp": _SAS_PERMISSIONS[op]}, expires)
        method = _SIGNED_METHOD.get(op)
        if method is None:
            return signer.url(base, op, fields, expires)
        signed = {h["name"]: h["value"] for h in headers}
        return signer.url(base, op, fields, expires, method=method, signed_headers=signed)

    # ------------------------------------------------------------------ directories
    def _dir_create(self) -> None:
        self.server.store.create_directory(self._vp())
        self._after_state_change()
        self._send_empty(204)

    def _dir_head(self) -> None:
        vp = self._vp()
        if not self.server.store.directory_exists(vp):
            raise not_found(f"The directory {vp.raw} does not exist.")
        self._send_empty(200)

    def _dir_list(self) -> None:
        vp = self._vp()
        page_size = self.query.get("page_size")
        result = self.server.store.list_directory(
            vp, int(page_size) if page_size and page_size.isdigit() else None, self.query.get("page_token")
        )
        self._listing_on_server_clock(result)
        self._send_json(200, result)

    def _listing_on_server_clock(self, result: dict[str, Any]) -> None:
        offset_ms = self.server.settings.clock_offset_s * 1000
        for entry in result.get("contents", []) if offset_ms else []:
            if "last_modified" in entry:
                entry["last_modified"] += offset_ms

    def _dir_delete(self) -> None:
        self.server.store.delete_directory(self._vp())
        self._after_state_change()
        self._send_empty(204)

    # ------------------------------------------------------------------ Unity Catalog
    def _uc_route(self, rest: str) -> Callable[[], None]:
        kind_plural, _, name = rest.partition("/")
        kinds = {"catalogs": "catalog", "schemas": "schema", "volumes": "volume"}
        if kind_plural not in kinds:
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{self.method} {self.raw_path}'")
        kind = kinds[kind_plural]
        self.route = f"uc.{kind_plural}.{self.method.lower()}"
        store = self.server.store
        name = unquote(name)

        def create() -> None:
            body = self._read_json()
            if not body.get("name"):
                raise bad_request("name is required")
            if kind == "catalog":
                info = store.create_catalog(body["name"], body.get("comment"))
            elif kind == "schema":
                if not body.get("catalog_name"):
                    raise bad_request("catalog_name is required")
                info = store.create_schema(body["catalog_name"], body["name"], body.get("comment"))
            else:
                for key in ("catalog_name", "schema_name"):
                    if not body.get(key):
                        raise bad_request(f"{key} is required")
                info = store.create_volume(
                    body["catalog_name"],
                    body["schema_name"],
                    body["name"],
                    body.get("volume_type"),
                    body.get("storage_location"),
                    body.get("comment"),
                )
            self._send_json(200, info)

        def listing() -> None:
            if kind == "catalog":
                items = store.list_uc(kind, [])
            elif kind == "schema":
                if not self.query.get("catalog_name"):
                    raise bad_request("catalog_name is required")
                items = store.list_uc(kind, [self.query["catalog_name"]])
            else:
                for key in ("catalog_name", "schema_name"):
                    if not self.query.get(key):
                        raise bad_request(f"{key} is required")
                items = store.list_uc(kind, [self.query["catalog_name"], self.query["schema_name"]])
            self._send_json(200, {kind_plural: items})

        def get() -> None:
            self._send_json(200, store.get_uc(kind, name))

        def delete() -> None:
            store.delete_uc(kind, name, force=self.query.get("force") == "true")
            self._send_json(200, {})

        if not name:
            return self._method({"POST": create, "GET": listing})
        return self._method({"GET": get, "DELETE": delete})

    # ------------------------------------------------------------------ control plane
    def _control(self) -> None:
        self.server.control(self)
