"""HMAC-signed, expiring presigned URLs: the emulator's stand-in for S3/Azure/GCS signatures."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from airflow_databricks_transfer.testing.files_api.errors import (
    PresignedError,
    expired_error,
    signature_error,
)

EXPIRES = "X-Emu-Expires"
SIGNATURE = "X-Emu-Signature"


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, op: str, fields: Mapping[str, str], expires: int) -> str:
        canonical = "\n".join([op, str(expires), *(f"{k}={fields[k]}" for k in sorted(fields))])
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, op: str, fields: Mapping[str, str], expires: int) -> str:
        query = {**fields, EXPIRES: str(expires), SIGNATURE: self._mac(op, fields, expires)}
        return f"{base.rstrip('/')}/_presigned/{op}?{urlencode(query)}"

    def verify(
        self, op: str, query: Mapping[str, str], cloud: str, now: float | None = None
    ) -> dict[str, str]:
        """Return the signed fields, or raise the cloud-style error a real store would send."""
        fields = {k: v for k, v in query.items() if k not in (EXPIRES, SIGNATURE)}
        try:
            expires = int(query[EXPIRES])
            given = query[SIGNATURE]
        except (KeyError, ValueError):
            raise signature_error() from None
        if not hmac.compare_digest(given, self._mac(op, fields, expires)):
            raise signature_error()
        if (now if now is not None else time.time()) >= expires:
            raise expired_error(cloud)
        return fields


def is_expired(err: PresignedError) -> bool:
    return "expired" in err.xml or "time frame" in err.xml
