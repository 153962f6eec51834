"""Directory listings as the real service gives them: unspecified order, opaque bound page tokens.

The real order is unspecified (the CLI sorts on the client side), so the emulator orders entries by a
seeded keyed hash of the directory and name: arbitrary, different per directory, reproducible for a
seed, and stable across the pages of one listing (each page continues after the last key returned, so
entries deleted or added meanwhile do not shift the others). A page token is encrypted and MACed with a
per-process key, so a client cannot read or forge it, and it carries the parameters of the request
that made it: the docs say every other parameter must match when a ``page_token`` is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from airflow_databricks_transfer.testing.files_api.errors import bad_request

_KEY = secrets.token_bytes(32)
_NONCE = 12
_TAG = 16


def order_key(order: str, seed: int, directory: str, name: str) -> str:
    """The sort key of one entry: its name when sorted, else a seeded hash of directory and name."""
    if order == "sorted":
        return name
    digest = hashlib.sha256(f"{seed}\0{directory}\0{name}".encode()).hexdigest()
    return f"{digest}\0{name}"


def _keystream(nonce: bytes, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hmac.new(_KEY, b"ks" + nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        counter += 1
    return bytes(out[:n])


def encode_token(binding: dict[str, Any], after: str) -> str:
    """An opaque token for the page after ``after`` of the listing ``binding`` describes."""
    plain = json.dumps({"b": binding, "a": after}, separators=(",", ":"), sort_keys=True).encode()
    nonce = secrets.token_bytes(_NONCE)
    cipher = bytes(x ^ y for x, y in zip(plain, _keystream(nonce, len(plain)), strict=True))
    tag = hmac.new(_KEY, b"tag" + nonce + cipher, hashlib.sha256).digest()[:_TAG]
    return base64.urlsafe_b64encode(nonce + cipher + tag).decode().rstrip("=")


def decode_token(token: str, binding: dict[str, Any]) -> str:
    """The key the page continues after; 400 for a token not made by this server or for other parameters."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        raise bad_request("Invalid page_token.") from None
    if len(raw) <= _NONCE + _TAG:
        raise bad_request("Invalid page_token.")
    nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    expected = hmac.new(_KEY, b"tag" + nonce + cipher, hashlib.sha256).digest()[:_TAG]
    if not hmac.compare_digest(tag, expected):
        raise bad_request("Invalid page_token.")
    plain = bytes(x ^ y for x, y in zip(cipher, _keystream(nonce, len(cipher)), strict=True))
    data = json.loads(plain)
    if data["b"] != binding:
        raise bad_request("page_token was issued for a request with other parameters.")
    after: str = data["a"]
    return after
