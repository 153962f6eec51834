"""Keep presigned URL query strings (bearer credentials) out of logs.

Its own light module, so the command line can install the filter without importing the Databricks SDK.
"""

from __future__ import annotations

import logging
import re

_URL_QUERY = re.compile(r"(https?://[^\s\"'?<>]+)\?[^\s\"'<>]*")


class RedactUrlQueries(logging.Filter):
    """databricks-sdk's DEBUG request dumps include response bodies that carry presigned URLs (their
    query strings are bearer credentials). Strip every URL query from what that logger emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL_QUERY.sub(r"\1?<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
