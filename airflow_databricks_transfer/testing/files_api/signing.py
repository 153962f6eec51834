"""HMAC-signed, expiring presigned URLs: the emulator's stand-in for S3/Azure/GCS signatures."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from email.message import Message
from urllib.parse import urlencode

from airflow_databricks_transfer.testing.files_api.errors import (
    PresignedError,
    expired_error,
    signature_mismatch,
)

EXPIRES = "X-Emu-Expires"
SIGNATURE = "X-Emu-Signature"
# Like X-Amz-SignedHeaders: present on S3/GCS-style URLs, whose signature then also covers the request's
# method and the values of these headers, as SigV4 and GCS V4 signing do.
SIGNED_HEADERS = "X-Emu-SignedHeaders"


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(
        self,
        op: str,
        fields: Mapping[str, str],
        expires: int,
        method: str = "",
        header_values: tuple[tuple[str, str], ...] = (),
    ) -> str:
        canonical = "\n".join(
            [
                op,
                str(expires),
                method,
                *(f"{k}={fields[k]}" for k in sorted(fields)),
                *(f"h:{name}:{value}" for name, value in header_values),
            ]
        )
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()

    def url(
        self,
        base: str,
        op: str,
        fields: Mapping[str, str],
        expires: int,
        *,
        method: str | None = None,
        signed_headers: Mapping[str, str] | None = None,
    ) -> str:
        """A URL for ``op``; with ``method``, bound to that method and the values of ``signed_headers``."""
        fields = dict(fields)
        bound_method = ""
        values: tuple[tuple[str, str], ...] = ()
        if method is not None:
            values = _canonical_headers(signed_headers or {})
            fields[SIGNED_HEADERS] = ";".join(name for name, _ in values)
            bound_method = method
        mac = self._mac(op, fields, expires, bound_method, values)
        query = {**fields, EXPIRES: str(expires), SIGNATURE: mac}
        return f"{base.rstrip('/')}/_presigned/{op}?{urlencode(query)}"

    def verify(
        self,
        op: str,
        query: Mapping[str, str],
        cloud: str,
        now: float | None = None,
        *,
        method: str = "",
        headers: Message | Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Return the signed fields, or raise the cloud-style error a real store would send.

        A bound URL's signature is recomputed from this request's method and signed header values, so
        another method, a missing header or another value is a signature mismatch, as on S3 and GCS.
        """
        fields = {k: v for k, v in query.items() if k not in (EXPIRES, SIGNATURE)}
        try:
            expires = int(query[EXPIRES])
            given = query[SIGNATURE]
        except (KeyError, ValueError):
            raise signature_mismatch(cloud) from None
        bound_method = ""
        values: tuple[tuple[str, str], ...] = ()
        if SIGNED_HEADERS in fields:
            names = [n for n in fields[SIGNED_HEADERS].split(";") if n]
            sent = headers or {}
            values = tuple((n, (sent.get(n) or "").strip()) for n in names)
            bound_method = method
        if not hmac.compare_digest(given, self._mac(op, fields, expires, bound_method, values)):
            raise signature_mismatch(cloud)
        if (now if now is not None else time.time()) >= expires:
            raise expired_error(cloud)
        return fields


def _canonical_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k.lower(), v.strip()) for k, v in headers.items()))


def is_expired(err: PresignedError) -> bool:
    return "expired" in err.xml or "time frame" in err.xml
