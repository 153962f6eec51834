"""One classifier for every Files API failure: transient unless clearly the client's fault."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from databricks.sdk._base_client import _BaseClient
from databricks.sdk.core import ApiClient
from databricks.sdk.errors import platform
from databricks.sdk.errors.base import DatabricksError

from airflow_databricks_transfer.clients.files_api import _sdk_single_attempt, http_error, sdk_error
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    ConnectionLostError,
    InvalidRequestError,
    MultipartUnavailableError,
    RemoteChangedError,
    RemoteNotFoundError,
    RetryableError,
    SessionLostError,
    ThrottledError,
    UrlExpiredError,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("status", [408, 429, 500, 501, 502, 503, 504, 507, 599])
def test_every_5xx_408_and_429_is_transient_on_both_paths(status: int) -> None:
    assert isinstance(http_error(status, b"", {}, "x"), RetryableError)
    # the SDK maps only some statuses to classes: a 502 is a bare DatabricksError
    err = DatabricksError("boom", error_code="INJECTED_FAULT")
    assert isinstance(sdk_error(err, "x", status=status, headers={}), RetryableError)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequestError),
        (401, AuthError),
        (403, AuthError),
        (404, RemoteNotFoundError),
        (405, InvalidRequestError),
        (409, AlreadyExistsError),
        (412, RemoteChangedError),
        (413, InvalidRequestError),
    ],
)
def test_clear_client_errors_are_fatal(status: int, kind: type[Exception]) -> None:
    assert type(http_error(status, b"", {}, "x")) is kind
    assert type(sdk_error(DatabricksError("no"), "x", status=status, headers={})) is kind


def test_retry_after_comes_from_the_answer_not_the_sdk_default() -> None:
    throttled = platform.TemporarilyUnavailable("busy", retry_after_secs=1)  # the SDK's made-up default
    without = sdk_error(throttled, "x", status=503, headers={})
    assert isinstance(without, ThrottledError) and without.retry_after_s is None
    given = sdk_error(throttled, "x", status=503, headers={"Retry-After": "7"})
    assert isinstance(given, ThrottledError) and given.retry_after_s == 7
    assert http_error(429, b"", {"Retry-After": "3"}, "x").retry_after_s == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "err",
    [
        TimeoutError("Timed out after 0:05:00"),  # the SDK's own retry loop giving up
        requests.ConnectionError("reset"),
        requests.Timeout("read timed out"),
        requests.exceptions.ChunkedEncodingError("cut"),
        requests.exceptions.ContentDecodingError("garbled"),
        requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0),
        ConnectionResetError(104, "reset"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_failures_and_timeouts_are_transient(err: BaseException) -> None:
    assert isinstance(sdk_error(err, "x"), ConnectionLostError)


@pytest.mark.parametrize(
    "err", [requests.exceptions.InvalidURL("bad"), requests.exceptions.MissingSchema("no scheme")]
)
def test_malformed_requests_are_fatal(err: BaseException) -> None:
    assert isinstance(sdk_error(err, "x"), InvalidRequestError)


def test_without_a_status_the_class_decides_and_unknown_is_transient() -> None:
    assert isinstance(sdk_error(platform.NotFound("gone"), "x", session_call=True), SessionLostError)
    assert isinstance(sdk_error(platform.NotFound("gone"), "x"), RemoteNotFoundError)
    assert isinstance(sdk_error(platform.InvalidParameterValue("bad"), "x"), InvalidRequestError)
    assert isinstance(sdk_error(platform.DeadlineExceeded("slow"), "x"), RetryableError)
    assert isinstance(sdk_error(DatabricksError("unable to parse response"), "x"), RetryableError)


def test_session_and_presigned_specials() -> None:
    assert isinstance(http_error(404, b"", {}, "x", session_call=True), SessionLostError)
    assert isinstance(http_error(404, b"<Code>NoSuchUpload</Code>", {}, "x"), SessionLostError)
    expired = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    assert isinstance(http_error(403, expired, {}, "x"), UrlExpiredError)
    disabled = DatabricksError(
        "Presigned URLs API is not enabled",
        error_code="PERMISSION_DENIED",
        details=[
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "FILES_API_API_IS_NOT_ENABLED"}
        ],
    )
    assert isinstance(sdk_error(disabled, "x", status=403, headers={}), MultipartUnavailableError)


def test_the_installed_sdks_still_offer_a_single_attempt_call() -> None:
    """Without it control calls fall back to ApiClient.do and its minutes-long internal retries."""
    api = ApiClient.__new__(ApiClient)  # no Config: building one resolves the host
    api._api_client = _BaseClient.__new__(_BaseClient)
    workspace = SimpleNamespace(api_client=api)
    assert _sdk_single_attempt(workspace) is not None  # type: ignore[arg-type]
    assert "self._api_client = _BaseClient(" in inspect.getsource(ApiClient.__init__)
    side = REPO / ".sdk" / "databricks-sdk-0.156.0" / "databricks" / "sdk" / "_base_client.py"
    if not side.is_file():
        pytest.fail(f"databricks-sdk 0.156.0 is not side-installed at {side}: run scripts/bootstrap.sh")
    source = side.read_text()
    assert re.search(r"def _perform\(\s*self,\s*method: str,\s*url: str,", source)
    assert "self._api_client = _BaseClient(" in (side.parent / "core.py").read_text()
