"""Let the UI's Test button test a saved ``databricks`` connection (Airflow 3.3.x sends ``port: 0``).

Why it fails without this: the Test button of the connections list posts the listed connection to
``POST /api/v2/connections/test`` with ``port: Number(connection.port)``, and ``Number(null)`` is 0. A
``databricks`` connection has no port (the form hides it), so the stored port is NULL. The route
(``api_fastapi/core_api/routes/public/connections.py``, ``_same_endpoint``) treats ``""`` as unset but
not 0, decides the caller is testing another destination, and because the UI sends the masked ``***``
password rather than real credentials it answers 400 "The host or port to test differs from the stored
connection". Upstream fixed the route the same way after 3.3.2 (port 0 counts as blank).

This ASGI middleware drops ``"port": 0`` from that request when ``conn_type`` is ``databricks``. No
connection addresses port 0, so the request then means exactly what the user clicked: test the stored
connection. Other requests and other connection types pass through untouched. No Airflow imports.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_databricks_transfer.connection import CONN_TYPE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TEST_ROUTE = "/api/v2/connections/test"
MAX_BODY = 1 << 20  # a connection is small; anything larger is passed through as it came


def normalise_test_body(raw: bytes) -> bytes:
    """The request body without a ``port`` of 0 for a ``databricks`` connection, else unchanged."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(body, dict) or body.get("conn_type") != CONN_TYPE:
        return raw
    port = body.get("port")
    if port != 0 or isinstance(port, bool):
        return raw
    del body["port"]
    return json.dumps(body).encode()


class ConnectionTestPortFix:
    """Pure ASGI middleware; touches only ``POST .../api/v2/connections/test``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).rstrip("/").endswith(TEST_ROUTE)
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or size > MAX_BODY:
                break
        complete = (
            messages[-1].get("type") == "http.request"
            and not messages[-1].get("more_body", False)
            and size <= MAX_BODY
        )
        if complete:
            body = normalise_test_body(b"".join(m.get("body", b"") for m in messages))
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
