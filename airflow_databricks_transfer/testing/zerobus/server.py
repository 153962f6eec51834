"""The Zerobus emulator: a grpcio ``EphemeralStream`` server behind a TCP front, plus one HTTP server for
the OAuth token endpoint (the ``unity_catalog_url`` the SDK asks) and the control plane."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from deltalake import DeltaTable

from airflow_databricks_transfer.testing.faults import FaultPlan, FaultRule, RequestInfo
from airflow_databricks_transfer.testing.zerobus.front import TcpFront
from airflow_databricks_transfer.testing.zerobus.proto import zerobus_service_pb2 as pb
from airflow_databricks_transfer.testing.zerobus.schema import SchemaError, TableSchema
from airflow_databricks_transfer.testing.zerobus.settings import ZerobusSettings
from airflow_databricks_transfer.testing.zerobus.stream import TABLE_HEADER, StreamSession
from airflow_databricks_transfer.testing.zerobus.streamlog import IngestEntry, StreamEntry, StreamLog
from airflow_databricks_transfer.testing.zerobus.warehouse import Warehouse, split_table_name

SERVICE = "databricks.zerobus.Zerobus"
TOKEN_PATH = "/oidc/v1/token"  # noqa: S105 - a URL path, not a secret

TableSpec = str | TableSchema | list[Mapping[str, Any]]


class ZerobusServer:
    """Wire handling and shared state; ``ZerobusEmulator`` runs it in the background."""

    def __init__(
        self,
        warehouse: Path,
        settings: ZerobusSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
    ) -> None:
        self.settings = settings or ZerobusSettings()
        self.warehouse = Warehouse(warehouse, lambda: self.settings)
        # gRPC routes end or reset a stream; the token route answers an HTTP status
        self.faults = FaultPlan(honours=frozenset({"grpc_code", "drop", "status"}))
        self.log = StreamLog()
        self._tokens: dict[str, tuple[str | None, float]] = {}  # token -> (table scope, expiry)
        self._tokens_lock = threading.Lock()
        s = self.settings
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.max_streams, thread_name_prefix="zerobus-stream"),
            handlers=[
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "EphemeralStream": grpc.stream_stream_rpc_method_handler(
                            self._ephemeral,
                            request_deserializer=pb.EphemeralStreamRequest.FromString,
                            response_serializer=pb.EphemeralStreamResponse.SerializeToString,
                        )
                    },
                )
            ],
            options=[
                ("grpc.max_receive_message_length", s.max_receive_message_bytes),
                ("grpc.max_send_message_length", s.max_receive_message_bytes),
                # the SDK's HTTP/2 keepalive pings must not earn a GOAWAY
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
            maximum_concurrent_rpcs=s.max_streams,
        )
        backend_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self.front = TcpFront(host, port, backend_port)
        self.http = ThreadingHTTPServer((host, http_port), _HttpHandler)
        self.http.daemon_threads = True
        self.http.zerobus = self  # type: ignore[attr-defined]
        self.host = host
        self._http_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self.front.port

    @property
    def http_port(self) -> int:
        return int(self.http.server_address[1])

    def start(self) -> None:
        self._grpc.start()
        self._http_thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.1}, name="zerobus-http", daemon=True
        )
        self._http_thread.start()

    def stop(self) -> None:
        self.front.close()
        self._grpc.stop(grace=None).wait(10)
        if self._http_thread is not None:
            self.http.shutdown()
            self._http_thread.join(timeout=10)
            self._http_thread = None
        self.http.server_close()
        self.warehouse.close()

    # ------------------------------------------------------------------ gRPC
    def _ephemeral(self, requests: Iterator[pb.EphemeralStreamRequest], ctx: Any) -> Iterator[Any]:
        return StreamSession(self, requests, ctx).run()

    def drop_peer(self, peer: str) -> bool:
        dropped = self.front.drop(peer)
        if dropped:
            self.log.count("connections_dropped")
        return dropped

    # ------------------------------------------------------------------ auth
    def check_authorization(self, header: str | None, table: str) -> tuple[grpc.StatusCode, str] | None:
        """None when ``header`` may write ``table``; else the status the stream is refused with."""
        if not header or not header.startswith("Bearer "):
            return grpc.StatusCode.UNAUTHENTICATED, "missing or malformed authorization header"
        token = header[len("Bearer ") :]
        if any(hmac.compare_digest(token, t) for t in self.settings.tokens):
            return None
        with self._tokens_lock:
            minted = self._tokens.get(token)
        if minted is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid access token"
        scope, expires = minted
        if time.monotonic() >= expires:
            return grpc.StatusCode.UNAUTHENTICATED, "access token expired"
        if scope is not None and scope != table:
            return grpc.StatusCode.PERMISSION_DENIED, f"token is not authorized for table '{table}'"
        return None

    def issue_token(
        self, auth_header: str | None, form: Mapping[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        """The client-credentials grant of ``POST /oidc/v1/token``: (HTTP status, JSON body)."""
        client_id, secret = _basic_auth(auth_header)
        known = self.settings.oauth_clients.get(client_id or "")
        if client_id is None or known is None or not hmac.compare_digest(known, secret or ""):
            self.log.count("tokens_refused")
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
        grant = (form.get("grant_type") or [""])[0]
        if grant != "client_credentials":
            self.log.count("tokens_refused")
            return 400, {"error": "unsupported_grant_type", "error_description": f"grant_type {grant!r}"}
        scope = _table_scope((form.get("authorization_details") or [""])[0])
        token = secrets.token_urlsafe(32)
        ttl = self.settings.token_ttl_s
        with self._tokens_lock:
            self._tokens[token] = (scope, time.monotonic() + ttl)
        self.log.count("tokens_issued")
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": "all-apis"}

    # ------------------------------------------------------------------ control operations
    def create_table(self, name: str, schema: TableSpec, *, exist_ok: bool = False) -> dict[str, Any]:
        table = self.warehouse.create(name, TableSchema.from_any(schema), exist_ok=exist_ok)
        return {"name": table.name, "schema": table.schema.to_spec(), "path": str(table.path)}

    def tables(self) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "schema": t.schema.to_spec(),
                "path": str(t.path),
                "commits": t.commits,
                "records_committed": t.records_committed,
            }
            for t in self.warehouse
        ]

    def stats(self) -> dict[str, Any]:
        return {**self.log.stats(), "tables": {t["name"]: t for t in self.tables()}}

    def update_settings(self, changes: Mapping[str, Any]) -> ZerobusSettings:
        fixed = {"max_receive_message_bytes", "max_streams"} & set(changes)
        if fixed:
            raise ValueError(f"settings fixed at start: {sorted(fixed)}")
        self.settings = self.settings.updated(changes)
        return self.settings

    def reset(self, *, tables: bool = False, faults: bool = True, log: bool = True) -> None:
        if tables:
            self.warehouse.reset()
        if faults:
            self.faults.clear()
        if log:
            self.log.clear()

    def state(self) -> dict[str, Any]:
        return {
            "settings": self.settings.public(),
            "tables": self.tables(),
            "faults": self.faults.snapshot(),
            "stats": self.log.stats(),
        }


def _basic_auth(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = raw.partition(":")
    return (client_id, secret) if sep else (None, None)


def _table_scope(details: str) -> str | None:
    """The TABLE the SDK's authorization_details ask for; None (any table) when it names none."""
    try:
        items = json.loads(details) if details else []
    except ValueError:
        return None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("object_type") == "TABLE":
            return str(item.get("object_full_path"))
    return None


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ZerobusEmulator/1"

    @property
    def zb(self) -> ZerobusServer:
        zb: ZerobusServer = self.server.zerobus  # type: ignore[attr-defined]
        return zb

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the token endpoint's requests carry credentials and tests read the counters instead."""

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self) -> Any:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == TOKEN_PATH and method == "POST":
                self._token()
            elif url.path.startswith("/_emulator/"):
                self._control(method, url.path[len("/_emulator/") :], parse_qs(url.query))
            else:
                raise _HttpError(404, f"no endpoint {method} {url.path}")
        except _HttpError as err:
            self._send(
                err.status,
                {"error_code": "NOT_FOUND" if err.status == 404 else "BAD_REQUEST", "message": str(err)},
            )
        except (ValueError, TypeError, KeyError, SchemaError) as err:
            self._send(400, {"error_code": "BAD_REQUEST", "message": f"bad request: {err}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _token(self) -> None:
        form = parse_qs(self._body().decode("utf-8", "replace"))
        scope = _table_scope((form.get("authorization_details") or [""])[0]) or ""
        rule = self.zb.faults.check(RequestInfo("zerobus.token", "POST", scope))
        if rule is not None:
            if rule.delay_s > 0:
                time.sleep(rule.delay_s)
            if rule.status is not None:
                self.zb.log.count("tokens_refused")
                self._send(
                    rule.status,
                    {
                        "error": rule.error_code or "server_error",
                        "error_description": rule.message or f"fault {rule.id}",
                    },
                )
                return
        status, payload = self.zb.issue_token(self.headers.get("Authorization"), form)
        self._send(status, payload)

    def _control(self, method: str, name: str, query: Mapping[str, list[str]]) -> None:
        zb = self.zb
        if name == "health" and method == "GET":
            self._send(200, {"ok": True})
        elif name == "state" and method == "GET":
            self._send(200, zb.state())
        elif name == "stats" and method == "GET":
            self._send(200, zb.stats())
        elif name == "requests" and method == "GET":
            self._send(200, zb.log.as_dicts(int((query.get("since") or ["0"])[0])))
        elif name == "tables" and method == "GET":
            self._send(200, {"tables": zb.tables()})
        elif name == "tables" and method == "POST":
            body = self._json()
            created = zb.create_table(
                str(body["name"]), body["schema"], exist_ok=bool(body.get("exist_ok", False))
            )
            self._send(200, created)
        elif name.startswith("tables/") and method == "DELETE":
            if not zb.warehouse.drop(name[len("tables/") :]):
                raise _HttpError(404, "no such table")
            self._send(200, {"ok": True})
        elif name == "faults" and method == "GET":
            self._send(200, {"faults": zb.faults.snapshot()})
        elif name == "faults" and method == "POST":
            body = self._json()
            built = [FaultRule.from_dict(r) for r in body.get("faults", [body])]  # all or nothing
            self._send(200, {"ids": [zb.faults.add(r).id for r in built]})
        elif name == "faults" and method == "DELETE":
            zb.faults.clear()
            self._send(200, {"ok": True})
        elif name.startswith("faults/") and method == "DELETE":
            if not zb.faults.remove(name[len("faults/") :]):
                raise _HttpError(404, "no such fault rule")
            self._send(200, {"ok": True})
        elif name == "settings" and method == "GET":
            self._send(200, zb.settings.public())
        elif name == "settings" and method == "PATCH":
            self._send(200, zb.update_settings(self._json()).public())
        elif name == "reset" and method == "POST":
            body = self._json()
            zb.reset(
                tables=bool(body.get("tables", False)),
                faults=bool(body.get("faults", True)),
                log=bool(body.get("log", True)),
            )
            self._send(200, {"ok": True})
        else:
            raise _HttpError(404, f"no control endpoint {method} /_emulator/{name}")


class ZerobusEmulator:
    """``with ZerobusEmulator(tables={"main.default.events": "id BIGINT NOT NULL, body STRING"}) as zb:``

    Point the SDK at ``ZerobusSdk(zb.endpoint, zb.uc_url)`` and use either OAuth
    (``client_id=zb.client_id, client_secret=zb.client_secret``) or a headers provider returning
    ``zb.headers(table)``.
    """

    def __init__(
        self,
        warehouse: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        tables: Mapping[str, TableSpec] | None = None,
        **settings: Any,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if warehouse is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="zerobus-emulator-")
            warehouse = self._tmp.name
        self.server = ZerobusServer(
            Path(warehouse), ZerobusSettings().updated(settings), host=host, port=port, http_port=http_port
        )
        for name, spec in (tables or {}).items():
            self.server.create_table(name, spec, exist_ok=True)
        self._started = False

    # ------------------------------------------------------------------ addresses and credentials
    @property
    def endpoint(self) -> str:
        """The Zerobus endpoint for ``ZerobusSdk(host=...)``: plaintext h2c needs the ``http://`` scheme."""
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def uc_url(self) -> str:
        """The workspace URL for ``ZerobusSdk(unity_catalog_url=...)``: the OAuth token endpoint's host."""
        return f"http://127.0.0.1:{self.server.http_port}"

    control_url = uc_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def warehouse(self) -> Path:
        return self.server.warehouse.root

    @property
    def token(self) -> str:
        return sorted(self.server.settings.tokens)[0]

    @property
    def client_id(self) -> str:
        return sorted(self.server.settings.oauth_clients)[0]

    @property
    def client_secret(self) -> str:
        return self.server.settings.oauth_clients[self.client_id]

    def headers(self, table: str) -> list[tuple[str, str]]:
        """What a custom ``HeadersProvider.get_headers()`` must return for ``table``."""
        return [("authorization", f"Bearer {self.token}"), (TABLE_HEADER, table)]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ZerobusEmulator:
        self.server.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self.server.stop()
            self._started = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ZerobusEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ tables, faults, inspection
    def create_table(self, name: str, schema: TableSpec, *, exist_ok: bool = False) -> dict[str, Any]:
        return self.server.create_table(name, schema, exist_ok=exist_ok)

    def table_path(self, name: str) -> Path:
        return self.server.warehouse.root.joinpath(*split_table_name(name))

    def read_table(self, name: str) -> list[dict[str, Any]]:
        """Every row of the Delta table, read back with ``deltalake`` as any reader would."""
        rows: list[dict[str, Any]] = DeltaTable(str(self.table_path(name))).to_pyarrow_table().to_pylist()
        return rows

    def add_fault(self, rule: FaultRule | None = None, **kwargs: Any) -> FaultRule:
        return self.server.faults.add(rule if rule is not None else FaultRule(**kwargs))

    def clear_faults(self) -> None:
        self.server.faults.clear()

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def streams(self, table: str | None = None) -> list[StreamEntry]:
        return self.server.log.streams(table)

    def ingests(self, table: str | None = None, since: int = 0) -> list[IngestEntry]:
        return self.server.log.ingests(table, since)

    def stream_dicts(self, table: str | None = None) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.streams(table)]

    def update_settings(self, **changes: Any) -> ZerobusSettings:
        return self.server.update_settings(changes)

    def reset(self, *, tables: bool = False, faults: bool = True, log: bool = True) -> None:
        self.server.reset(tables=tables, faults=faults, log=log)
