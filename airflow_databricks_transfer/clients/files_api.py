"""Databricks Files API adapter: implements the engine's upload and download ports.

Control calls (initiate, part URLs, complete, abort, download URLs) go through databricks-sdk's
authenticated ``ApiClient``, so every auth method the SDK supports works. Data goes through a pooled
HTTP session: presigned URLs without any auth header, and the workspace's own Files API (single-shot
PUT, direct GET when presigned URLs are unavailable) with the SDK's auth headers. Every failure leaves
this module as an error of the engine's tree.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import platform as sdk_errors
from databricks.sdk.errors.base import DatabricksError

from airflow_databricks_transfer.clients.http import HttpPool, Response
from airflow_databricks_transfer.clients.redact import RedactUrlQueries
from airflow_databricks_transfer.engine.checkpoint import RemoteVersion
from airflow_databricks_transfer.engine.clock import ServerClock
from airflow_databricks_transfer.engine.clock import http_date as _http_date
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    ConnectionLostError,
    InvalidRequestError,
    MultipartUnavailableError,
    RateLimitedError,
    RemoteChangedError,
    RemoteNotFoundError,
    RetryableError,
    SessionLostError,
    ThrottledError,
    TransferError,
    UrlExpiredError,
)
from airflow_databricks_transfer.engine.ports import Pace, PresignedUrl, SingleShotBody, UploadSession
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy, call_with_retry

log = logging.getLogger(__name__)
T = TypeVar("T")

_sdk_logger = logging.getLogger("databricks.sdk")
if not any(isinstance(f, RedactUrlQueries) for f in _sdk_logger.filters):
    _sdk_logger.addFilter(RedactUrlQueries())

FILES = "/api/2.0/fs/files"
DIRS = "/api/2.0/fs/directories"
_PRESIGNED_DISABLED = "FILES_API_API_IS_NOT_ENABLED"


def _date_s(resp: Response) -> int | None:
    """The answer's ``Date`` header as whole epoch seconds (the server's clock), or None."""
    value = _http_date(resp.headers.get("Date"))
    return None if value is None else int(value)


_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 4096


def _quote(path: str, *, file: bool = False) -> str:
    """Percent-encode a volume path for a URL, refusing up front what the service would refuse.

    Every refusal is an InvalidRequestError that names the problem: the server's answer to a HEAD
    has no body to explain it, and an old emulator even cut the connection (a retry loop).
    """
    if not path.startswith("/"):
        raise InvalidRequestError(
            f"Files API paths are absolute, like /Volumes/catalog/schema/volume/...: {path!r}"
        )
    if file and path.endswith("/"):
        raise InvalidRequestError(f"A file path may not end with '/': {path!r}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            f"The path is not valid Unicode (it cannot be UTF-8 encoded): {path!r}"
        ) from None
    if len(encoded) > _MAX_PATH_BYTES:
        raise InvalidRequestError(
            f"The path is {len(encoded)} bytes long in UTF-8; the Files API allows {_MAX_PATH_BYTES}: "
            f"{path[:80]!r}..."
        )
    for name in path.split("/"):
        size = len(name.encode("utf-8"))
        if size > _MAX_NAME_BYTES:
            raise InvalidRequestError(
                f"The name {name[:40]!r}... is {size} bytes long in UTF-8; the Files API allows "
                f"{_MAX_NAME_BYTES} bytes per name (path {path[:80]!r})"
            )
    return quote(path)


def _merged(*layers: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    """Headers of several layers; a later layer's header replaces an earlier one of the same name in any
    case. A presigned URL's signature covers the headers handed out with it, so a default of ours must
    not go out next to the server's ``content-type`` (two Content-Types: a signature mismatch)."""
    out: dict[str, str] = {}
    for layer in layers:
        for name, value in layer.items() if isinstance(layer, Mapping) else layer:
            for key in [k for k in out if k.lower() == name.lower()]:
                del out[key]
            out[name] = value
    return out


def _retry_after(headers: Mapping[str, str] | Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _is_expired_body(body: bytes) -> bool:
    text = body.decode("utf-8", "replace")
    return (
        "<Code>ExpiredToken</Code>" in text
        or (
            "<Code>AuthenticationFailed</Code>" in text
            and "Signature not valid in the specified time frame" in text
        )
        or ("<Code>AccessDenied</Code>" in text and "<Message>Request has expired</Message>" in text)
    )


def _reason(body: bytes) -> str:
    """A short, credential-free description of an error body."""
    text = body.decode("utf-8", "replace")
    m = re.search(r'"message"\s*:\s*"([^"]{0,300})', text) or re.search(r"<Message>([^<]{0,300})", text)
    code = re.search(r'"error_code"\s*:\s*"([A-Z_]+)', text) or re.search(r"<Code>([^<]{0,80})", text)
    parts = [g.group(1) for g in (code, m) if g]
    return ": ".join(parts) if parts else text[:200]


def _by_status(
    status: int, reason: str, retry_after_s: float | None, *, session_call: bool, not_found_text: str = ""
) -> TransferError:
    """The one place an HTTP status becomes an engine error: transient unless clearly the client's fault."""
    if status == 429:
        return RateLimitedError(reason, retry_after_s=retry_after_s)
    if status == 503:
        return ThrottledError(reason, retry_after_s=retry_after_s)
    if status == 408 or status >= 500:
        return RetryableError(reason, retry_after_s=retry_after_s)
    if status == 404:
        if session_call or "NoSuchUpload" in not_found_text:
            return SessionLostError(reason)
        return RemoteNotFoundError(reason)
    if status in (401, 403):
        return AuthError(reason)
    if status == 409:
        return AlreadyExistsError(reason)
    if status == 412:
        return RemoteChangedError(reason)
    if 400 <= status < 500:
        return InvalidRequestError(reason)
    # 1xx/3xx where an answer was expected: a proxy or a redirect got in the way; not the client's fault
    return RetryableError(reason, retry_after_s=retry_after_s)


def http_error(
    status: int, body: bytes, headers: Any, what: str, *, session_call: bool = False
) -> TransferError:
    """Map a non-2xx answer (workspace JSON or cloud XML) to the engine's error tree."""
    reason = f"{what}: HTTP {status} {_reason(body)}".strip()
    if status in (400, 403) and _is_expired_body(body):
        return UrlExpiredError(reason)
    if status == 403 and _PRESIGNED_DISABLED.encode() in body:
        return MultipartUnavailableError(reason)
    text = body.decode("utf-8", "replace") if status == 404 else ""
    return _by_status(status, reason, _retry_after(headers), session_call=session_call, not_found_text=text)


# requests exceptions that say the request itself is malformed: retrying cannot help
_FATAL_REQUESTS_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
)
# DatabricksError classes when the HTTP status is not known (mapped by error_code, or a future SDK)
_SDK_STATUS: tuple[tuple[type[DatabricksError], int], ...] = (
    (sdk_errors.TooManyRequests, 429),
    (sdk_errors.TemporarilyUnavailable, 503),
    (sdk_errors.DeadlineExceeded, 504),
    (sdk_errors.InternalError, 500),
    (sdk_errors.NotFound, 404),
    (sdk_errors.ResourceConflict, 409),
    (sdk_errors.Unauthenticated, 401),
    (sdk_errors.PermissionDenied, 403),
    (sdk_errors.BadRequest, 400),
)


def sdk_error(
    err: BaseException,
    what: str,
    *,
    session_call: bool = False,
    status: int | None = None,
    headers: Any = None,
) -> TransferError:
    """Map what a databricks-sdk call raised to the engine's error tree.

    ``status`` and ``headers`` are those of the HTTP answer when one arrived: the SDK maps only some
    statuses to classes (a 502 becomes a bare ``DatabricksError``), so the status decides, not the class.
    Anything that is not clearly the client's fault (a status-less SDK error, any ``requests`` failure,
    ``TimeoutError`` from the SDK's own retry loop, other OS errors) is transient.
    """
    msg = f"{what}: {type(err).__name__}: {err}" if not isinstance(err, DatabricksError) else f"{what}: {err}"
    if isinstance(err, _FATAL_REQUESTS_ERRORS):
        return InvalidRequestError(msg)
    if isinstance(err, (requests.RequestException, TimeoutError, OSError)) and not isinstance(
        err, DatabricksError
    ):
        return ConnectionLostError(msg)
    if not isinstance(err, DatabricksError):
        return InvalidRequestError(msg)
    reasons = {d.reason for d in err.get_error_info()}
    if _PRESIGNED_DISABLED in reasons:
        return MultipartUnavailableError(msg)
    if status is not None:
        msg = f"{what}: HTTP {status} {err}"
    else:
        status = next((code for cls, code in _SDK_STATUS if isinstance(err, cls)), None)
    if status is None:  # an answer the SDK could not place: not provably the client's fault
        return RetryableError(msg)
    retry_after = _retry_after(headers) if headers is not None else None
    if retry_after is None and headers is None:
        retry_after = err.retry_after_secs
    return _by_status(status, msg, retry_after, session_call=session_call)


def _sdk_single_attempt(workspace: WorkspaceClient) -> Callable[..., requests.Response] | None:
    """The SDK's one-request method (``_BaseClient._perform``, in 0.156 through 0.162), or None.

    Private, so looked up defensively; tests/unit pin that the installed SDK still has it, since
    without it every control call falls back to ``ApiClient.do`` and its own minutes-long retries.
    """
    base = getattr(workspace.api_client, "_api_client", None)
    perform = getattr(base, "_perform", None)
    return perform if callable(perform) else None


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    is_directory: bool
    size: int | None
    last_modified_ms: int | None


def _file_info(entry: Mapping[str, Any]) -> FileInfo:
    """A listing entry as proto3 JSON sends it: false, zero and empty fields are simply absent."""
    is_dir = bool(entry.get("is_directory", False))
    path = str(entry["path"])
    name = entry.get("name") or path.rstrip("/").rsplit("/", 1)[-1]
    return FileInfo(
        path,
        str(name),
        is_dir,
        None if is_dir else int(entry.get("file_size", 0)),
        int(entry.get("last_modified", 0)),
    )


class FilesApiClient:
    """One workspace; hands out upload targets and download sources for paths in it."""

    @classmethod
    def for_workspace(
        cls, workspace: WorkspaceClient, *, use_presigned: bool = True, retry: RetryPolicy | None = None
    ) -> FilesApiClient:
        """A client whose data path shares the workspace config's ``http_timeout_seconds`` (as no
        progress for that long): what the Airflow hook and the command line both build."""
        timeout = getattr(workspace.config, "http_timeout_seconds", None)
        return cls(
            workspace,
            http=HttpPool(timeout_s=float(timeout)) if timeout else None,
            use_presigned=use_presigned,
            retry=retry,
        )

    def __init__(
        self,
        workspace: WorkspaceClient,
        *,
        http: HttpPool | None = None,
        use_presigned: bool = True,
        url_ttl_s: float = 3600.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.workspace = workspace
        # for the metadata and directory calls made outside a transfer (the engine retries its own)
        self.retry = retry or RetryPolicy()
        self.http = http or HttpPool()
        self.use_presigned = use_presigned
        self.url_ttl_s = url_ttl_s
        self.host = workspace.config.host.rstrip("/")
        self.clock = ServerClock()

    # ------------------------------------------------------------------ plumbing
    def control(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        what: str,
        session_call: bool = False,
    ) -> Any:
        """One authenticated control call through the SDK; failures become engine errors.

        One attempt only: the engine's retry policy is the single retry loop (backoff, Retry-After, a
        budget, a cancel check). ``ApiClient.do`` would retry 429/503 and connection errors on its own
        for up to ``retry_timeout_seconds`` (default 300 s; 0 also means 300), sleeping uninterruptibly,
        inside each of our attempts. The HTTP status is captured with a response hook, because the SDK
        maps only some statuses to exception classes.
        """
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        answers: list[requests.Response] = []
        config = self.workspace.config
        sent_at = time.time()

        def auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
            # what the SDK's session auth does (config.authenticate()), plus a hook that sees the answer
            r.headers.update(config.authenticate())
            r.register_hook("response", lambda resp, *args, **kwargs: on_answer(resp))  # type: ignore[no-untyped-call]
            return r

        def on_answer(resp: requests.Response) -> None:
            answers.append(resp)
            self.clock.observe(resp.headers.get("Date"), sent_at, time.time())

        try:
            once = _sdk_single_attempt(self.workspace)
            if once is None:
                return self.workspace.api_client.do(
                    method, path, query=query, body=body, headers=headers, auth=auth
                )
            merged = {
                **getattr(config, "_custom_headers", {}),
                **headers,
                "User-Agent": config.user_agent,
            }
            resp = once(method, f"{self.host}{path}", query=query, headers=merged, body=body, auth=auth)
            if not resp.content:
                return {}
            return resp.json()
        except Exception as err:  # every failure, SDK or not, is classified in sdk_error
            last = answers[-1] if answers else None
            raise sdk_error(
                err,
                what,
                session_call=session_call,
                status=last.status_code if last is not None else None,
                headers=last.headers if last is not None else None,
            ) from err

    def auth_headers(self) -> dict[str, str]:
        """Fresh auth headers of the workspace (OAuth tokens are refreshed by the SDK as needed)."""
        headers = dict(self.workspace.config.authenticate())
        workspace_id = getattr(self.workspace.config, "workspace_id", None)
        if workspace_id:
            headers["X-Databricks-Workspace-Id"] = str(workspace_id)
        return headers

    def workspace_request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: memoryview | None = None,
        body_file: tuple[str, int] | None = None,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> Response:
        sent_at = time.time()
        resp = self.http.request(
            method,
            f"{self.host}{path}",
            {**self.auth_headers(), **(headers or {})},
            body=body,
            body_file=body_file,
            cancel=cancel,
            pace=pace,
        )
        # a long body upload makes the bounds loose, never wrong: the answer was made after sent_at
        self.clock.observe(resp.headers.get("Date"), sent_at, time.time())
        return resp

    def with_expire_time(self, call: Callable[[str], T]) -> tuple[T, float]:
        """Run a URL-minting call with an expire_time on the server's clock; (answer, local expiry).

        Before any answer of the workspace was seen the skew is unknown: if that first call is refused
        as invalid, its own Date may show a skewed clock, and one more try with the corrected time
        tells a bad clock from a bad request.
        """
        known = self.clock.known
        expire, expires_at = self.clock.expire_time(self.url_ttl_s)
        try:
            return call(expire), expires_at
        except InvalidRequestError:
            if known or not self.clock.known:
                raise
        expire, expires_at = self.clock.expire_time(self.url_ttl_s)
        return call(expire), expires_at

    # ------------------------------------------------------------------ metadata and directories
    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        def on_retry(attempt: int, err: TransferError, delay: float) -> None:
            log.info("%s: retry %d in %.1f s after %s", what, attempt, delay, err)

        return call_with_retry(fn, self.retry, on_retry=on_retry)

    def stat(self, path: str) -> RemoteVersion | None:
        """The file's version, or None when there is none (transient failures retried)."""
        return self._retrying(lambda: self.stat_once(path), f"HEAD {path}")

    def stat_once(self, path: str) -> RemoteVersion | None:
        """One HEAD; the engine calls this inside its own retry loop."""
        return self.stat_dated(path)[0]

    def stat_dated(self, path: str) -> tuple[RemoteVersion | None, int | None]:
        """One HEAD: the file's version (None if missing) and the server's clock (``Date``, whole
        seconds) when it answered, which tells whether a Last-Modified second is already over."""
        if path.endswith("/"):
            _quote(path)
            return None, None  # a file path never ends with '/' (the server refuses it): no file is there
        resp = self.workspace_request("HEAD", f"{FILES}{_quote(path)}")
        resp.read()
        date_s = _date_s(resp)
        if resp.status == 404:
            return None, date_s
        if resp.status >= 300:
            # a HEAD answer has no body to say why: say at least that the path itself may be the cause
            hint = " (the Files API refused this path)" if resp.status == 400 else ""
            raise http_error(resp.status, b"", resp.headers, f"HEAD {path}{hint}")
        version = RemoteVersion(
            int(resp.headers.get("Content-Length", "0")),
            resp.headers.get("ETag"),
            resp.headers.get("Last-Modified"),
        )
        return version, date_s

    def list_directory(self, path: str, *, page_size: int | None = None) -> Iterator[FileInfo]:
        token: str | None = None
        while True:
            query: dict[str, Any] = {}
            if page_size:
                query["page_size"] = page_size
            if token:
                query["page_token"] = token

            def fetch(q: dict[str, Any] = query) -> Any:
                return self.control("GET", f"{DIRS}{_quote(path)}", query=q, what=f"list {path}")

            page = self._retrying(fetch, f"list {path}")
            for e in page.get("contents") or []:
                yield _file_info(e)
            token = page.get("next_page_token")
            if not token:
                return

    def create_directory(self, path: str) -> None:
        self._retrying(
            lambda: self.control("PUT", f"{DIRS}{_quote(path)}", what=f"create directory {path}"),
            f"create directory {path}",
        )

    def directory_exists(self, path: str) -> bool:
        try:
            self._retrying(
                lambda: self.control("HEAD", f"{DIRS}{_quote(path)}", what=f"HEAD directory {path}"),
                f"HEAD directory {path}",
            )
        except RemoteNotFoundError:
            return False
        return True

    def _delete(self, path: str, what: str) -> None:
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.control("DELETE", path, what=what)
            except RemoteNotFoundError:
                if attempts == 1:
                    raise
                # an earlier attempt whose answer was lost did the work

        self._retrying(once, what)

    def delete_file(self, path: str) -> None:
        self._delete(f"{FILES}{_quote(path)}", f"delete {path}")

    def delete_directory(self, path: str) -> None:
        self._delete(f"{DIRS}{_quote(path)}", f"delete directory {path}")

    def upload_target(self, path: str) -> FilesApiUploadTarget:
        _quote(path, file=True)
        return FilesApiUploadTarget(self, path)

    def download_source(self, path: str) -> FilesApiDownloadSource:
        _quote(path, file=True)
        return FilesApiDownloadSource(self, path)


class FilesApiUploadTarget:
    def __init__(self, client: FilesApiClient, path: str) -> None:
        self.client = client
        self._path = path
        self._q = _quote(path, file=True)

    @property
    def destination(self) -> str:
        return self._path

    def server_time(self, local: float | None = None) -> float:
        """The workspace's clock at local time ``local`` (default now); its Last-Modified uses it."""
        return (time.time() if local is None else local) + self.client.clock.skew_s

    def stat(self) -> RemoteVersion | None:
        return self.client.stat_once(self._path)

    def delete(self) -> None:
        self.client.control("DELETE", f"{FILES}{self._q}", what=f"delete {self._path}")

    def put_single(
        self,
        body: SingleShotBody,
        *,
        overwrite: bool,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> None:
        resp = self.client.workspace_request(
            "PUT",
            f"{FILES}{self._q}?overwrite={str(overwrite).lower()}",
            headers={"Content-Type": "application/octet-stream"},
            body=body if isinstance(body, memoryview) else None,
            body_file=None if isinstance(body, memoryview) else body,
            cancel=cancel,
            pace=pace,
        )
        answer = resp.read()
        if resp.status >= 300:
            raise http_error(resp.status, answer, resp.headers, f"upload {self._path}")

    def initiate(self, *, overwrite: bool) -> UploadSession:
        answer = self.client.control(
            "POST",
            f"{FILES}{self._q}",
            query={"action": "initiate-upload", "overwrite": str(overwrite).lower()},
            what=f"initiate upload of {self._path}",
        )
        kind: Literal["multipart", "resumable"]
        for key, kind in (("multipart_upload", "multipart"), ("resumable_upload", "resumable")):
            token = (answer.get(key) or {}).get("session_token") if isinstance(answer, dict) else None
            if token:
                return UploadSession(kind, token)
        raise MultipartUnavailableError(f"initiate-upload of {self._path} gave no upload session")

    def part_urls(self, token: str, first: int, count: int) -> dict[int, PresignedUrl]:
        def mint(expire: str) -> Any:
            return self.client.control(
                "POST",
                "/api/2.0/fs/create-upload-part-urls",
                body={
                    "path": self._path,
                    "session_token": token,
                    "start_part_number": first,
                    "count": count,
                    "expire_time": expire,
                },
                what=f"part URLs for {self._path}",
                session_call=True,
            )

        answer, expires_at = self.client.with_expire_time(mint)
        urls = {}
        for item in answer.get("upload_part_urls", []):
            headers = tuple((h["name"], h["value"]) for h in item.get("headers") or [])
            urls[int(item["part_number"])] = PresignedUrl(item["url"], headers, expires_at)
        return urls

    def put_part(
        self,
        url: PresignedUrl,
        body: memoryview,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> str:
        headers = _merged({"Content-Type": "application/octet-stream"}, url.headers)
        resp = self.client.http.request("PUT", url.url, headers, body=body, cancel=cancel, pace=pace)
        data = resp.read()
        if resp.status not in (200, 201):
            raise http_error(
                resp.status, data, resp.headers, f"part upload to {self._path}", session_call=False
            )
        return resp.headers.get("ETag") or ""

    def complete(
        self, token: str, parts: Sequence[tuple[int, str]], *, content_md5: bytes | None = None
    ) -> None:
        """``content_md5`` is ignored: Volumes keep no content hash."""
        self.client.control(
            "POST",
            f"{FILES}{self._q}",
            query={"action": "complete-upload", "upload_type": "multipart", "session_token": token},
            body={"parts": [{"part_number": n, "etag": e} for n, e in parts]},
            what=f"complete upload of {self._path}",
            session_call=True,
        )

    def abort(self, token: str) -> None:
        self.client.control(
            "POST",
            f"{FILES}{self._q}",
            query={"action": "abort-upload", "upload_type": "multipart", "session_token": token},
            what=f"abort upload of {self._path}",
            session_call=True,
        )

    def resumable_url(self, token: str) -> PresignedUrl:
        answer = self.client.control(
            "POST",
            "/api/2.0/fs/create-resumable-upload-url",
            body={"path": self._path, "session_token": token},
            what=f"resumable URL for {self._path}",
            session_call=True,
        )
        node = answer.get("resumable_upload_url") or {}
        if not node.get("url"):
            raise MultipartUnavailableError("create-resumable-upload-url gave no URL")
        return PresignedUrl(node["url"], tuple((h["name"], h["value"]) for h in node.get("headers") or []))

    def _resumable_answer(self, resp: Response, what: str) -> int | None:
        data = resp.read()
        if resp.status in (200, 201):
            return None
        if resp.status == 308:
            rng = resp.headers.get("Range")
            return int(rng.rsplit("-", 1)[1]) + 1 if rng else 0
        if resp.status == 412:
            raise AlreadyExistsError(f"{self._path} already exists (412 from the resumable upload)")
        raise http_error(resp.status, data, resp.headers, what, session_call=resp.status == 404)

    def put_chunk(
        self,
        url: PresignedUrl,
        body: memoryview,
        offset: int,
        total: int | None,
        *,
        cancel: threading.Event | None = None,
        pace: Pace | None = None,
    ) -> int | None:
        end = offset + len(body) - 1
        headers = _merged(
            {"Content-Type": "application/octet-stream"},
            url.headers,
            {"Content-Range": f"bytes {offset}-{end}/{'*' if total is None else total}"},
        )
        resp = self.client.http.request("PUT", url.url, headers, body=body, cancel=cancel, pace=pace)
        return self._resumable_answer(resp, f"resumable chunk of {self._path}")

    def query_confirmed(self, url: PresignedUrl) -> int | None:
        resp = self.client.http.request(
            "PUT", url.url, _merged(url.headers, {"Content-Range": "bytes */*"}), body=b""
        )
        return self._resumable_answer(resp, f"resumable status of {self._path}")


class _RangeReader:
    def __init__(self, resp: Response, expected: int) -> None:
        self._resp = resp
        self._left = expected

    def readinto(self, buf: memoryview) -> int:
        if self._left <= 0:
            return 0
        n = self._resp.readinto(buf[: min(len(buf), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._resp.close()


class FilesApiDownloadSource:
    """Ranged reads of one file, through a shared presigned URL when the workspace offers them."""

    def __init__(self, client: FilesApiClient, path: str) -> None:
        self.client = client
        self._path = path
        self._q = _quote(path, file=True)
        self._url: PresignedUrl | None = None
        self._direct = not client.use_presigned
        self._pin: str | None = None  # "<presigned|direct> <ETag>" of the first ranged response
        self._lock = threading.Lock()
        # latest server clock second seen in any answer: a request sent after it is served at or after it
        self._server_s: int | None = None
        self._settle_lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._path

    # How long a download waits for the server's clock to leave a fresh file's Last-Modified second
    # (one second and a round trip normally; longer only if the server's clocks disagree).
    settle_timeout_s: float = 5.0

    def stat(self) -> RemoteVersion:
        remote, date_s = self.client.stat_dated(self._path)
        self._saw_date(date_s)
        if remote is None:
            raise RemoteNotFoundError(f"{self._path} does not exist")
        return remote

    def _saw_date(self, date_s: int | None) -> None:
        if date_s is not None:
            with self._lock:
                if self._server_s is None or date_s > self._server_s:
                    self._server_s = date_s

    def _settled_before(self, pinned: RemoteVersion, server_s: int | None) -> bool:
        """Was the pinned Last-Modified second over when a request was sent (its clock ``server_s``)?

        Only then does that Last-Modified name one version: a write after it gets a later second.
        """
        modified = pinned.last_modified_s
        return modified is None or (server_s is not None and server_s > modified)

    def _settle(self, pinned: RemoteVersion, cancel: threading.Event | None) -> None:
        """Wait until the server's clock has left the pinned Last-Modified second, with the file still
        the pinned size and second; RemoteChangedError if it is not."""
        with self._settle_lock:
            deadline = time.monotonic() + self.settle_timeout_s
            while True:
                with self._lock:
                    server_s = self._server_s
                if self._settled_before(pinned, server_s):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RetryableError(
                        f"{self._path}: the server's clock ({server_s}) has not passed the file's "
                        f"Last-Modified ({pinned.last_modified}); without an ETag a rewrite in that "
                        "second could not be told apart, so no bytes are trusted yet"
                    )
                # into the next second (by the local clock; the HEAD says where the server's is)
                delay = min(left, 1.0 - time.time() % 1.0 + 0.02)
                if cancel is not None:
                    if cancel.wait(delay):
                        raise Cancelled("download stopped")
                else:
                    time.sleep(delay)
                remote, date_s = self.client.stat_dated(self._path)
                self._saw_date(date_s)
                if remote is None:
                    raise RemoteNotFoundError(f"{self._path} does not exist")
                if remote.size != pinned.size or remote.last_modified_s != pinned.last_modified_s:
                    raise RemoteChangedError(
                        f"{self._path} changed (size or Last-Modified differs from the pinned version)"
                    )

    def invalidate_url(self) -> None:
        with self._lock:
            self._url = None

    def _presigned(self) -> PresignedUrl | None:
        with self._lock:
            if self._direct:
                return None
            if self._url is None or self._url.expires_at - time.time() < 60:
                try:
                    answer, expires_at = self.client.with_expire_time(
                        lambda expire: self.client.control(
                            "POST",
                            "/api/2.0/fs/create-download-url",
                            query={"path": self._path, "expire_time": expire},
                            what=f"download URL for {self._path}",
                        )
                    )
                except (MultipartUnavailableError, AuthError, InvalidRequestError) as err:
                    log.info("presigned download URLs unavailable (%s); reading through the Files API", err)
                    self._direct = True
                    return None
                if not answer.get("url"):
                    self._direct = True
                    return None
                headers = tuple((h["name"], h["value"]) for h in answer.get("headers") or [])
                self._url = PresignedUrl(answer["url"], headers, expires_at)
            return self._url

    @property
    def data_pin(self) -> str | None:
        with self._lock:
            return self._pin

    def restore_pin(self, pin: str | None) -> None:
        with self._lock:
            self._pin = pin

    def _expected_etag(self, mode: str, pinned: RemoteVersion) -> str | None:
        """The ETag every ranged GET must match: the data path's own once learnt, else the HEAD's."""
        with self._lock:
            pin = self._pin
        if pin is None:
            return pinned.etag if mode == "direct" else None
        pin_mode, _, etag = pin.partition(" ")
        if pin_mode != mode:
            # presigned and direct reads carry different ETags (the storage's vs the workspace's)
            raise RemoteChangedError(
                f"{self._path}: reads moved from {pin_mode} to {mode} URLs; the pinned version "
                "cannot be verified across them"
            )
        return etag

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> _RangeReader:
        headers = {"Range": f"bytes={start}-{start + length - 1}", "Accept": "application/octet-stream"}
        if pinned.last_modified:
            headers["If-Unmodified-Since"] = pinned.last_modified
        for _ in range(2):
            with self._lock:
                sent_after = self._server_s
            url = self._presigned()
            mode = "direct" if url is None else "presigned"
            expected = self._expected_etag(mode, pinned)
            if expected:
                headers["If-Match"] = expected
            else:
                headers.pop("If-Match", None)
            if url is not None:
                resp = self.client.http.request("GET", url.url, _merged(url.headers, headers), cancel=cancel)
            else:
                resp = self.client.workspace_request(
                    "GET", f"{FILES}{self._q}", headers=headers, cancel=cancel
                )
            self._saw_date(_date_s(resp))
            if resp.status not in (200, 206):
                body = resp.read()
                raise http_error(resp.status, body, resp.headers, f"download {self._path}")
            by_etag = self._check_version(resp, start, length, pinned, mode)
            if by_etag or self._settled_before(pinned, sent_after):
                return _RangeReader(resp, length)
            # No ETag, and the request went out while the file's Last-Modified second was still
            # running: a rewrite later in that second would look the same, so these bytes could be of
            # either version. Wait until the second is over, then ask again.
            resp.close()
            self._settle(pinned, cancel)
        raise RetryableError(f"{self._path}: could not pin the version being downloaded")

    def _check_version(
        self, resp: Response, start: int, length: int, pinned: RemoteVersion, mode: str
    ) -> bool:
        """Refuse bytes of another version, even from a server that ignores the conditional headers;
        True when an ETag vouched for them, False when only size and Last-Modified did.

        Size and Last-Modified (one-second resolution) miss a same-size rewrite within a second, and
        the workspace's HEAD may carry no ETag at all; so the first ranged response's ETag pins every
        later range (sent as If-Match, and compared here), as s3transfer and the Azure SDK do.
        """
        last_modified = resp.headers.get("Last-Modified")
        total = None
        content_range = resp.headers.get("Content-Range")
        if resp.status == 206 and content_range:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
            if not m or int(m.group(1)) != start or int(m.group(2)) != start + length - 1:
                resp.close()
                raise ConnectionLostError(
                    f"unexpected Content-Range {content_range!r} for bytes {start}+{length}"
                )
            total = None if m.group(3) == "*" else int(m.group(3))
        elif resp.status == 200:
            total = int(resp.headers.get("Content-Length", "-1"))
            if start != 0 or total != length:
                resp.close()
                raise ConnectionLostError("the server ignored the Range request")
        changed = (total is not None and total != pinned.size) or (
            last_modified is not None
            and pinned.last_modified is not None
            and last_modified != pinned.last_modified
        )
        etag = resp.headers.get("ETag")
        if not changed and etag:
            if mode == "direct" and pinned.etag and etag != pinned.etag:
                changed = True
            with self._lock:
                if self._pin is None:
                    self._pin = f"{mode} {etag}"
                pin = self._pin
            changed = changed or pin != f"{mode} {etag}"
        if changed:
            resp.close()
            raise RemoteChangedError(
                f"{self._path} changed (size, Last-Modified or ETag differs from the pinned version)"
            )
        return bool(etag)
