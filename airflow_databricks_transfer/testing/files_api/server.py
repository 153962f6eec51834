"""The Files API emulator server: a threaded HTTP server plus a reset/seed/inspect control plane."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_databricks_transfer.testing.faults import HTTP_EFFECTS, FaultPlan, FaultRule
from airflow_databricks_transfer.testing.files_api.errors import ApiError, bad_request
from airflow_databricks_transfer.testing.files_api.handler import FilesApiHandler
from airflow_databricks_transfer.testing.files_api.ratelimit import RequestLimiter
from airflow_databricks_transfer.testing.files_api.requestlog import LoggedRequest, RequestLog
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings
from airflow_databricks_transfer.testing.files_api.signing import UrlSigner
from airflow_databricks_transfer.testing.files_api.state import Store, parse_volume_path

_SEED_CHUNK = 4 * 1024 * 1024


class _TrackingHandler(FilesApiHandler):
    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)


class FilesApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, root: Path, settings: EmulatorSettings) -> None:
        self.store = Store(root, settings)
        self.faults = FaultPlan(honours=HTTP_EFFECTS)
        self.log = RequestLog()
        self.limiter = RequestLimiter()  # the workspace's rate limits (settings.rate_limit_*)
        key_file = self.store.internal / "signing.key"
        if not key_file.exists():
            key_file.write_bytes(secrets.token_bytes(32))
        self.signer = UrlSigner(key_file.read_bytes())
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((host, port), _TrackingHandler)
        host_s, port_n = self.server_address[:2]
        host_s = host_s.decode() if isinstance(host_s, bytes) else host_s
        self.base_url = f"http://{host_s}:{port_n}"

    # settings live on the store so the state model and the wire handler read one copy
    @property
    def settings(self) -> EmulatorSettings:
        return self.store.settings

    @property
    def data_plane_url(self) -> str:
        return self.settings.data_plane_url or self.base_url

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ operations used by both
    # the control endpoint and the Python API
    def update_settings(self, changes: Mapping[str, Any]) -> EmulatorSettings:
        self.store.settings = self.store.settings.updated(changes)
        return self.store.settings

    def seed(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        store = self.store
        for name in spec.get("catalogs", []):
            store.create_catalog(name, exist_ok=True)
        for full in spec.get("schemas", []):
            catalog, schema = _split(full, 2)
            store.create_catalog(catalog, exist_ok=True)
            store.create_schema(catalog, schema, exist_ok=True)
        for full in spec.get("volumes", []):
            catalog, schema, volume = _split(full, 3)
            store.create_catalog(catalog, exist_ok=True)
            store.create_schema(catalog, schema, exist_ok=True)
            store.create_volume(catalog, schema, volume, exist_ok=True)
        created = []
        for item in spec.get("files", []):
            vp = parse_volume_path(item["path"])
            tmp = store.new_temp()
            with open(tmp, "wb") as f:
                if "content_b64" in item:
                    f.write(base64.b64decode(item["content_b64"]))
                else:
                    _write_random(f, int(item["size"]), int(item.get("seed", 0)))
            meta = store.commit_file(vp, tmp, overwrite=True)
            created.append({"path": vp.normalized, "size": meta.size, "etag": meta.etag})
        return {"files": created}

    def state(self) -> dict[str, Any]:
        return {
            "settings": self.settings.public(),
            "files": [
                {"path": p, "size": m.size, "etag": m.etag, "last_modified": m.last_modified}
                for p, m in self.store.iter_files()
            ],
            "sessions": self.store.sessions_snapshot(),
            "faults": self.faults.snapshot(),
        }

    def end_sessions(self, path: str, action: str) -> int:
        """End every live upload session to ``path`` server-side ("abort" or "expire"); how many."""
        if action not in ("abort", "expire"):
            raise ValueError("action must be 'abort' or 'expire'")
        tokens = self.store.tokens_for(path)
        for token in tokens:
            if action == "abort":
                self.store.abort(token)
            else:
                self.store.expire(token)
        return len(tokens)

    def reset(self, state: bool = True, faults: bool = True, log: bool = True) -> None:
        if state:
            self.store.reset()
        if faults:
            self.faults.clear()
        if log:
            self.log.clear()

    # ------------------------------------------------------------------ control endpoint
    def control(self, h: FilesApiHandler) -> None:
        name, method = h.route[len("control.") :], h.method
        try:
            if name == "health" and method == "GET":
                h._send_json(200, {"ok": True})
            elif name == "state" and method == "GET":
                h._send_json(200, self.state())
            elif name == "requests" and method == "GET":
                since = int(h.query.get("since", "0"))
                h._send_json(200, {"requests": self.log.as_dicts(since)})
            elif name == "stats" and method == "GET":
                h._send_json(200, self.log.stats())
            elif name == "reset" and method == "POST":
                body = h._read_json()
                self.reset(**{k: bool(body.get(k, True)) for k in ("state", "faults", "log")})
                h._send_json(200, {"ok": True})
            elif name == "seed" and method == "POST":
                h._send_json(200, self.seed(h._read_json()))
            elif name == "faults" and method == "GET":
                h._send_json(200, {"faults": self.faults.snapshot()})
            elif name == "faults" and method == "POST":
                body = h._read_json()
                rules = body.get("faults", [body])
                built = [FaultRule.from_dict(r) for r in rules]  # all or nothing
                added = [self.faults.add(r).id for r in built]
                h._send_json(200, {"ids": added})
            elif name == "faults" and method == "DELETE":
                h._read_small_body()
                self.faults.clear()
                h._send_json(200, {"ok": True})
            elif name.startswith("faults/") and method == "DELETE":
                if not self.faults.remove(name[len("faults/") :]):
                    raise ApiError(404, "NOT_FOUND", "no such fault rule")
                h._send_json(200, {"ok": True})
            elif name == "sessions" and method == "POST":
                body = h._read_json()
                h._send_json(200, {"ended": self.end_sessions(str(body["path"]), str(body["action"]))})
            elif name == "settings" and method == "GET":
                h._send_json(200, self.settings.public())
            elif name == "settings" and method == "PATCH":
                h._send_json(200, self.update_settings(h._read_json()).public())
            else:
                raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No control endpoint {method} /_emulator/{name}")
        except (ValueError, TypeError, KeyError) as err:
            raise bad_request(f"bad control request: {err}") from None


def _split(full: str, n: int) -> list[str]:
    parts = full.split(".")
    if len(parts) != n:
        raise ValueError(f"expected a {n}-part name, got {full!r}")
    return parts


def _write_random(f: Any, size: int, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    left = size
    while left > 0:
        n = min(left, _SEED_CHUNK)
        f.write(rng.randbytes(n))
        left -= n


class FilesApiEmulator:
    """Run the emulator in a background thread: ``with FilesApiEmulator() as emu: ... emu.url``."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Iterable[str] | None = None,
        volumes: Iterable[str] = (),
        **settings: Any,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="files-api-emulator-")
            root = self._tmp.name
        base = EmulatorSettings()
        if tokens is not None:
            settings["tokens"] = frozenset(tokens)
        self.server = FilesApiServer(host, port, Path(root), base.updated(settings))
        self._thread: threading.Thread | None = None
        if volumes:
            self.server.seed({"volumes": list(volumes)})

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def token(self) -> str:
        return sorted(self.server.settings.tokens)[0]

    @property
    def root(self) -> Path:
        return self.server.store.root

    def start(self) -> FilesApiEmulator:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="files-api-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server.close_connections()
        self.server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FilesApiEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # convenience wrappers over the shared operations
    def add_fault(self, rule: FaultRule | None = None, **kwargs: Any) -> FaultRule:
        return self.server.faults.add(rule if rule is not None else FaultRule(**kwargs))

    def clear_faults(self) -> None:
        self.server.faults.clear()

    def requests(self, route: str | None = None, since: int = 0) -> list[LoggedRequest]:
        return self.server.log.entries(since, route)

    def stats(self) -> dict[str, Any]:
        return self.server.log.stats()

    def part_bytes(self, path: str) -> dict[int, int]:
        """Bytes received per part number for uploads to ``path`` (counts cut and repeated sends)."""
        return self.server.log.bytes_by_part(path)

    def seed(self, **spec: Any) -> dict[str, Any]:
        return self.server.seed(spec)

    def abort_sessions(self, path: str) -> int:
        """Abort the upload sessions to ``path`` as an admin or the server would."""
        return self.server.end_sessions(path, "abort")

    def expire_sessions(self, path: str) -> int:
        """Make the upload sessions to ``path`` expire now."""
        return self.server.end_sessions(path, "expire")

    def create_volume(self, full_name: str) -> None:
        self.server.seed({"volumes": [full_name]})

    def update_settings(self, **changes: Any) -> EmulatorSettings:
        return self.server.update_settings(changes)

    def reset(self, *, state: bool = True, faults: bool = True, log: bool = True) -> None:
        self.server.reset(state, faults, log)

    def local_path(self, volume_path: str) -> Path:
        """Where the emulator keeps a volume file on disk (for byte-level assertions)."""
        return self.server.store.disk_path(parse_volume_path(volume_path))

    def state(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = json.loads(json.dumps(self.server.state()))
        return snapshot

    def sessions(self) -> list[dict[str, Any]]:
        return self.server.store.sessions_snapshot()

    def request_dicts(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.requests()]
