"""databricks-sdk's DEBUG dumps must not carry presigned URLs (their query strings are credentials)."""

from __future__ import annotations

import logging

import pytest

from airflow_databricks_transfer.clients import files_api  # noqa: F401 - installs the filter


def test_sdk_debug_logs_lose_url_queries(caplog: pytest.LogCaptureFixture) -> None:
    sdk = logging.getLogger("databricks.sdk")
    with caplog.at_level(logging.DEBUG, logger="databricks.sdk"):
        sdk.debug(
            "< %s", '{"url": "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc123&X-Amz-Expires=60"}'
        )
        sdk.debug("GET https://host/api/2.0/fs/files/Volumes/a/b/c/f.bin")
    assert "abc123" not in caplog.text and "X-Amz-Signature" not in caplog.text
    assert "https://bucket.s3.amazonaws.com/k?<redacted>" in caplog.text
    assert "GET https://host/api/2.0/fs/files/Volumes/a/b/c/f.bin" in caplog.text  # no query: untouched
