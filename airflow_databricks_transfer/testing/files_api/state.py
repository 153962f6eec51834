"""The emulator's state model: files and directories on disk, upload sessions, Unity Catalog objects.

Everything a client can observe lives under ``root``: ``root/Volumes/<catalog>/<schema>/<volume>/...``
mirrors the volume paths, and ``root/.emulator/`` holds upload sessions (one folder each, parts as
files) so that sessions survive a client that disappears and even a restart of the emulator.
Wire concerns (HTTP, JSON shapes, auth) stay in ``handler.py``.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_databricks_transfer.testing.files_api import listing
from airflow_databricks_transfer.testing.files_api.errors import (
    ApiError,
    already_exists,
    bad_request,
    not_found,
)
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings

_PART_PREFIX = "part-"
_PARTS_DATA = "parts.data"
_LAYOUT = "layout.json"


@dataclass(frozen=True)
class FileMeta:
    size: int
    mtime_ns: int
    etag: str
    content_type: str = "application/octet-stream"

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime_ns // 1_000_000_000, usegmt=True)

    @property
    def mtime_s(self) -> int:
        return self.mtime_ns // 1_000_000_000


def etag_of(st: os.stat_result) -> str:
    """An opaque validator that changes with every write, without hashing content on the hot path."""
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return '"' + hashlib.blake2b(key, digest_size=16).hexdigest() + '"'


@dataclass(frozen=True)
class VolumePath:
    """A validated absolute path inside a Unity Catalog volume."""

    raw: str
    components: tuple[str, ...]  # ("Volumes", catalog, schema, volume, *rest)

    @property
    def volume_full_name(self) -> str:
        return ".".join(self.components[1:4])

    @property
    def is_volume_root(self) -> bool:
        return len(self.components) == 4

    @property
    def normalized(self) -> str:
        return "/" + "/".join(self.components)


def parse_volume_path(path: str) -> VolumePath:
    if not path.startswith("/"):
        raise bad_request(f"Path must be absolute: {path!r}")
    comps = tuple(c for c in path.strip("/").split("/"))
    if "\x00" in path or any(c in ("", ".", "..") for c in comps):
        raise bad_request(f"Path contains an empty, '.' or '..' component: {path!r}")
    if len(comps) < 4 or comps[0] != "Volumes":
        raise bad_request(
            f"Path must be of the form /Volumes/<catalog>/<schema>/<volume>/...: {path!r}",
        )
    check_path_limits(path)
    return VolumePath(path, comps)


_MAX_COMPONENT_BYTES = 255  # one name, in UTF-8 bytes (NAME_MAX of the file systems behind volumes)
_MAX_PATH_BYTES = 4096  # a whole volume path, in UTF-8 bytes [unverified: PATH_MAX]


def check_path_limits(path: str) -> None:
    """400 for a name or a path longer than the service stores (instead of an OS error on disk)."""
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        raise bad_request(f"The path is longer than {_MAX_PATH_BYTES} bytes.")
    for comp in path.split("/"):
        size = len(comp.encode("utf-8", "surrogatepass"))
        if size > _MAX_COMPONENT_BYTES:
            raise bad_request(
                f"A path component is {size} bytes long; at most {_MAX_COMPONENT_BYTES} bytes are allowed."
            )


@dataclass
class UploadSession:
    token: str
    path: str
    overwrite: bool | None
    kind: str  # "multipart" | "resumable"
    created_at: float
    expires_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class PartMeta:
    number: int
    size: int
    etag: str
    # "data": in the session's parts.data at ``offset``; "file": its own file; "discard": benchmark sink
    where: str = "file"
    offset: int = 0


@dataclass(frozen=True)
class PartSlot:
    """Where the body of an incoming part is written."""

    path: Path
    offset: int
    where: str


class Store:
    """Thread-safe state. Bulk bytes move outside the lock; only metadata transitions take it."""

    def __init__(self, root: Path, settings: EmulatorSettings) -> None:
        self.root = root.resolve()
        self.settings = settings
        self.internal = self.root / ".emulator"
        self.tmp_dir = self.internal / "tmp"
        self.uploads_dir = self.internal / "uploads"
        self._uc_file = self.internal / "unity_catalog.json"
        self._lock = threading.RLock()
        self._sessions: dict[str, UploadSession] = {}
        self._finished: dict[str, str] = {}  # token -> "completed" | "aborted"
        self._uc: dict[str, dict[str, Any]] = {}
        for d in (self.tmp_dir, self.uploads_dir, self.root / "Volumes"):
            d.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---------------------------------------------------------------- persistence
    def _load(self) -> None:
        if self._uc_file.exists():
            self._uc = json.loads(self._uc_file.read_text())
        for entry in self.uploads_dir.iterdir():
            meta = entry / "session.json"
            if meta.is_file():
                session = UploadSession(**json.loads(meta.read_text()))
                self._sessions[session.token] = session
        for catalog in self.settings.default_catalogs:
            if not (self.root / "Volumes" / catalog).is_dir():
                self.create_catalog(catalog, comment="default catalog", exist_ok=True)
                self.create_schema(catalog, "default", comment="default schema", exist_ok=True)

    def _save_uc(self) -> None:
        tmp = self._uc_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._uc))
        tmp.replace(self._uc_file)

    def reset(self) -> None:
        """Forget everything: files, sessions and catalog objects (then re-create the default catalogs)."""
        with self._lock:
            shutil.rmtree(self.root / "Volumes", ignore_errors=True)
            shutil.rmtree(self.internal, ignore_errors=True)
            self._sessions.clear()
            self._finished.clear()
            self._uc.clear()
            for d in (self.tmp_dir, self.uploads_dir, self.root / "Volumes"):
                d.mkdir(parents=True, exist_ok=True)
            self._load()

    # ---------------------------------------------------------------- paths
    def disk_path(self, vp: VolumePath) -> Path:
        return self.root.joinpath(*vp.components)

    def _require_volume(self, vp: VolumePath) -> None:
        vol_dir = self.root.joinpath(*vp.components[:4])
        if vol_dir.is_dir():
            return
        if self.settings.auto_create_volumes:
            catalog, schema, volume = vp.components[1:4]
            with self._lock:
                self.create_catalog(catalog, exist_ok=True)
                self.create_schema(catalog, schema, exist_ok=True)
                self.create_volume(catalog, schema, volume, exist_ok=True)
            return
        raise not_found(f"Volume '{vp.volume_full_name}' does not exist.")

    def new_temp(self) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.tmp"

    # ---------------------------------------------------------------- files
    def file_meta(self, vp: VolumePath) -> FileMeta:
        if vp.is_volume_root:
            raise not_found(f"The file {vp.raw} does not exist (it is a volume).")
        p = self.disk_path(vp)
        try:
            st = p.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(f"The file {vp.raw} does not exist.") from None
        if not p.is_file():
            raise not_found(f"The file {vp.raw} does not exist (it is a directory).")
        return FileMeta(st.st_size, st.st_mtime_ns, etag_of(st))

    def open_file(self, vp: VolumePath) -> tuple[FileMeta, Any]:
        """Open for reading and describe the opened version, so a concurrent replace can't mix versions."""
        if vp.is_volume_root:
            raise not_found(f"The file {vp.raw} does not exist (it is a volume).")
        p = self.disk_path(vp)
        try:
            f = open(p, "rb")  # noqa: SIM115 - handed to the caller, who closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise not_found(f"The file {vp.raw} does not exist.") from None
        st = os.fstat(f.fileno())
        return FileMeta(st.st_size, st.st_mtime_ns, etag_of(st)), f

    def check_writable(self, vp: VolumePath, overwrite: bool | None) -> None:
        """Fail fast before a body is received; commit_file checks again under the lock."""
        self._require_volume(vp)
        if vp.is_volume_root:
            raise ApiError(409, "RESOURCE_CONFLICT", f"{vp.raw} is a volume, not a file.")
        p = self.disk_path(vp)
        if p.is_dir():
            raise ApiError(409, "RESOURCE_CONFLICT", f"A directory exists at {vp.raw}.")
        if overwrite is False and p.exists():
            raise already_exists(vp.raw)
        for parent in p.parents:
            if parent == self.root:
                break
            if parent.exists() and not parent.is_dir():
                raise ApiError(409, "RESOURCE_CONFLICT", f"A parent of {vp.raw} is a file: {parent.name}.")

    def commit_file(self, vp: VolumePath, tmp: Path, overwrite: bool | None) -> FileMeta:
        """Atomically place ``tmp`` at ``vp``; readers see the old or the new version, never a mix."""
        with self._lock:
            try:
                self.check_writable(vp, overwrite)
                dest = self.disk_path(vp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._stamp(tmp, dest)
                tmp.replace(dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            st = dest.stat()
            return FileMeta(st.st_size, st.st_mtime_ns, etag_of(st))

    def _stamp(self, tmp: Path, dest: Path) -> None:
        now = self.clock_ns()
        if not self.settings.last_modified_bump:
            # the real service: Last-Modified is the second of the write, whatever was there before
            os.utime(tmp, ns=(now, now))
            return
        # kind reading: every write of a path lands in a later second than the version it replaces,
        # so If-Unmodified-Since (one-second resolution) always sees the change
        try:
            old_s = dest.stat().st_mtime_ns // 1_000_000_000
        except FileNotFoundError:
            old_s = -1
        new_ns = now if now // 1_000_000_000 > old_s else (old_s + 1) * 1_000_000_000
        os.utime(tmp, ns=(new_ns, new_ns))

    def clock_ns(self) -> int:
        """The server's clock for Last-Modified stamps and the Date header (frozen on request)."""
        frozen = self.settings.frozen_clock_s
        return time.time_ns() if frozen is None else int(frozen * 1_000_000_000)

    def delete_file(self, vp: VolumePath) -> None:
        self.file_meta(vp)
        with self._lock:
            try:
                self.disk_path(vp).unlink()
            except FileNotFoundError:
                raise not_found(f"The file {vp.raw} does not exist.") from None

    # ---------------------------------------------------------------- directories
    def create_directory(self, vp: VolumePath) -> None:
        self._require_volume(vp)
        p = self.disk_path(vp)
        with self._lock:
            probe = p
            while probe != self.root:
                if probe.exists() and not probe.is_dir():
                    raise ApiError(
                        409, "RESOURCE_CONFLICT", f"Cannot create directory {vp.raw}: a file is in the way."
                    )
                probe = probe.parent
            p.mkdir(parents=True, exist_ok=True)

    def directory_exists(self, vp: VolumePath) -> bool:
        return self.disk_path(vp).is_dir()

    def list_directory(self, vp: VolumePath, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        """One page: seeded arbitrary order, opaque bound tokens, proto3 JSON (defaults omitted)."""
        p = self.disk_path(vp)
        if not p.is_dir():
            raise not_found(f"The directory {vp.raw} does not exist.")
        limit = self.settings.list_page_size_max
        if page_size is not None:
            if page_size < 0:
                raise bad_request("page_size must be non-negative")
            if page_size:
                limit = min(page_size, limit)
        base = vp.normalized.rstrip("/")
        order, seed = self.settings.list_order, self.settings.list_order_seed
        binding = {"d": base, "s": page_size, "o": order, "seed": seed}
        after = listing.decode_token(page_token, binding) if page_token else None
        with os.scandir(p) as it:
            keyed = sorted((listing.order_key(order, seed, base, e.name), e.name) for e in it)
        if after is not None:
            keyed = [k for k in keyed if k[0] > after]
        page, rest = keyed[:limit], keyed[limit:]
        contents = []
        for _, name in page:
            try:
                st = (p / name).stat()
            except FileNotFoundError:
                continue
            is_dir = (p / name).is_dir()
            entry: dict[str, Any] = {"path": f"{base}/{name}" + ("/" if is_dir else ""), "name": name}
            if is_dir:
                entry["is_directory"] = True
            elif st.st_size:
                entry["file_size"] = st.st_size
            if st.st_mtime_ns // 1_000_000:
                entry["last_modified"] = st.st_mtime_ns // 1_000_000
            contents.append(entry)
        out: dict[str, Any] = {}
        if contents:
            out["contents"] = contents
        if rest:
            out["next_page_token"] = listing.encode_token(binding, page[-1][0])
        return out

    def delete_directory(self, vp: VolumePath) -> None:
        if vp.is_volume_root:
            raise bad_request(f"{vp.raw} is a volume; delete it through Unity Catalog.")
        p = self.disk_path(vp)
        with self._lock:
            if not p.is_dir():
                raise not_found(f"The directory {vp.raw} does not exist.")
            if any(p.iterdir()):
                raise ApiError(
                    400,
                    "BAD_REQUEST",
                    f"The directory {vp.raw} is not empty.",
                    reason="FILES_API_DIRECTORY_IS_NOT_EMPTY",
                )
            p.rmdir()

    # ---------------------------------------------------------------- upload sessions
    def create_session(self, vp: VolumePath, overwrite: bool | None, kind: str) -> UploadSession:
        self.check_writable(vp, None)
        now = time.time()
        session = UploadSession(
            token=secrets.token_urlsafe(32),
            path=vp.normalized,
            overwrite=overwrite,
            kind=kind,
            created_at=now,
            expires_at=now + self.settings.session_ttl_s,
        )
        folder = self.uploads_dir / session.token
        folder.mkdir()
        (folder / "session.json").write_text(session.to_json())
        with self._lock:
            self._sessions[session.token] = session
        return session

    def session(self, token: str, path: str | None = None) -> UploadSession:
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires_at < time.time():
                self._drop_session(token, "expired")
                session = None
            if session is None:
                state = self._finished.get(token)
                detail = f" (it was {state})" if state else ""
                raise not_found(f"Upload session not found or expired{detail}.")
            if path is not None and parse_volume_path(path).normalized != session.path:
                raise bad_request("The session token does not belong to this path.")
            return session

    def _drop_session(self, token: str, why: str) -> None:
        self._sessions.pop(token, None)
        self._finished[token] = why
        shutil.rmtree(self.uploads_dir / token, ignore_errors=True)

    def sessions_snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for s in self._sessions.values():
                parts = [asdict(p) for p in self.list_parts(s.token)]
                out.append({"path": s.path, "kind": s.kind, "expires_at": s.expires_at, "parts": parts})
            return out

    # Parts of the usual, uniform size are written straight into one sparse file per session at
    # (n - 1) * part_size, where part_size is the size of the first part received; complete-upload then
    # only truncates and renames it. Any other part (a larger one, a chunked body, a re-send of a part
    # already stored there) gets a file of its own and complete-upload falls back to joining copies.
    def part_path(self, token: str, number: int) -> Path:
        return self.uploads_dir / token / f"{_PART_PREFIX}{number:05d}.bin"

    def _part_meta_path(self, token: str, number: int) -> Path:
        return self.uploads_dir / token / f"{_PART_PREFIX}{number:05d}.json"

    def _nominal_part_size(self, token: str) -> int | None:
        layout = self.uploads_dir / token / _LAYOUT
        try:
            return int(json.loads(layout.read_text())["part_size"])
        except FileNotFoundError:
            return None

    def check_part_number(self, number: int) -> None:
        if not 1 <= number <= self.settings.max_parts:
            raise bad_request(f"part_number must be in 1..{self.settings.max_parts}, got {number}")

    def open_part_slot(self, token: str, number: int, length: int | None) -> PartSlot:
        """Decide where the body of an incoming part goes, before a byte of it is read."""
        self.check_part_number(number)
        if self.settings.discard_part_bodies:
            self.session(token)
            return PartSlot(Path(os.devnull), 0, "discard")
        with self._lock:
            self.session(token)
            folder = self.uploads_dir / token
            existing = self._read_part_meta(token, number)
            if length and (existing is None or existing.where != "data"):
                nominal = self._nominal_part_size(token)
                if nominal is None:
                    nominal = length
                    _write_atomic(folder / _LAYOUT, json.dumps({"part_size": nominal}))
                if length <= nominal:
                    data = folder / _PARTS_DATA
                    data.touch(exist_ok=True)
                    return PartSlot(data, (number - 1) * nominal, "data")
            return PartSlot(self.new_temp(), 0, "file")

    def abandon_part_slot(self, slot: PartSlot) -> None:
        if slot.where == "file":
            slot.path.unlink(missing_ok=True)

    def commit_part(self, token: str, number: int, slot: PartSlot, size: int) -> PartMeta:
        with self._lock:
            try:
                self.session(token)
            except BaseException:
                self.abandon_part_slot(slot)
                raise
            if slot.where == "file":
                slot.path.replace(self.part_path(token, number))
            key = f"{token}:{number}:{size}:{time.time_ns()}:{secrets.token_hex(8)}".encode()
            etag = '"' + hashlib.blake2b(key, digest_size=16).hexdigest() + '"'
            meta = PartMeta(number, size, etag, slot.where, slot.offset)
            _write_atomic(self._part_meta_path(token, number), json.dumps(asdict(meta)))
            return meta

    def _read_part_meta(self, token: str, number: int) -> PartMeta | None:
        try:
            return PartMeta(**json.loads(self._part_meta_path(token, number).read_text()))
        except FileNotFoundError:
            return None

    def list_parts(self, token: str) -> list[PartMeta]:
        folder = self.uploads_dir / token
        try:
            names = [e.name for e in os.scandir(folder)]
        except FileNotFoundError:
            return []
        parts = []
        for name in names:
            if name.startswith(_PART_PREFIX) and name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError):
                    parts.append(PartMeta(**json.loads((folder / name).read_text())))
        return sorted(parts, key=lambda p: p.number)

    def complete_multipart(self, token: str, path: str, listed: list[tuple[int, str]]) -> FileMeta:
        session = self.session(token, path)
        vp = parse_volume_path(session.path)
        if not listed:
            raise bad_request("The parts list is empty.")
        numbers = [n for n, _ in listed]
        if numbers != sorted(set(numbers)):
            raise bad_request("Parts must be listed once each, in ascending part_number order.")
        have = {p.number: p for p in self.list_parts(token)}
        for i, (number, etag) in enumerate(listed):
            self.check_part_number(number)
            part = have.get(number)
            if part is None:
                raise bad_request(f"Part {number} was not uploaded in this session.")
            if (
                etag != part.etag
                and etag.strip('"') != part.etag.strip('"')
                and not self._blank_etag_ok(etag)
            ):
                raise bad_request(f"The ETag of part {number} does not match the uploaded part.")
            if i < len(listed) - 1 and part.size < self.settings.min_part_size_bytes:
                raise bad_request(
                    f"Part {number} is {part.size} bytes; every part but the last must be at least "
                    f"{self.settings.min_part_size_bytes} bytes."
                )
        if session.overwrite is False and self.disk_path(vp).exists():
            raise already_exists(session.path)
        parts = [have[n] for n in numbers]
        nominal = self._nominal_part_size(token)
        folder = self.uploads_dir / token
        in_place = (
            numbers == list(range(1, len(parts) + 1))
            and all(p.where == "data" for p in parts)
            and all(p.size == nominal for p in parts[:-1])
        )
        tmp = self.new_temp()
        try:
            if any(p.where == "discard" for p in parts):  # benchmark sink: the size is all there is
                with open(tmp, "wb") as out:
                    out.truncate(sum(p.size for p in parts))
            elif in_place:  # the bytes already sit in order: no copy
                os.truncate(folder / _PARTS_DATA, sum(p.size for p in parts))
                (folder / _PARTS_DATA).replace(tmp)
            else:
                with open(tmp, "wb") as out:
                    for p in parts:
                        src = folder / _PARTS_DATA if p.where == "data" else self.part_path(token, p.number)
                        with open(src, "rb") as f:
                            _copy_all(f.fileno(), out.fileno(), p.size, p.offset)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            meta = self.commit_file(vp, tmp, session.overwrite)
        finally:
            with self._lock:  # its bytes have moved: the session cannot be completed twice
                self._drop_session(token, "completed")
        return meta

    def _blank_etag_ok(self, etag: str) -> bool:
        """Azure Put Block answers no ETag, so a client can only list "" for those parts at complete."""
        return etag == "" and self.settings.cloud == "AZURE"

    def expire(self, token: str) -> None:
        """Let a session run out now, as the server's clock would (control plane and tests)."""
        with self._lock:
            self.session(token)
            self._drop_session(token, "expired")

    def tokens_for(self, path: str) -> list[str]:
        """Tokens of the live sessions uploading to ``path`` (control plane: tests never see tokens)."""
        normalized = parse_volume_path(path).normalized
        with self._lock:
            return [t for t, s in self._sessions.items() if s.path == normalized]

    def abort(self, token: str, path: str | None = None) -> None:
        self.session(token, path)
        with self._lock:
            self._drop_session(token, "aborted")

    # resumable (legacy GCP) sessions keep one growing data file; its size is the confirmed offset
    def resumable_data(self, token: str) -> Path:
        return self.uploads_dir / token / "data"

    def resumable_confirmed(self, token: str) -> int:
        try:
            return self.resumable_data(token).stat().st_size
        except FileNotFoundError:
            return 0

    def finish_resumable(self, token: str) -> FileMeta:
        session = self.session(token)
        vp = parse_volume_path(session.path)
        data = self.resumable_data(token)
        if not data.exists():
            data.touch()
        if session.overwrite is False and self.disk_path(vp).exists():
            raise ApiError(412, "PRECONDITION_FAILED", f"The file {session.path} already exists.")
        tmp = self.new_temp()
        data.replace(tmp)
        meta = self.commit_file(vp, tmp, session.overwrite)
        with self._lock:
            self._drop_session(token, "completed")
        return meta

    # ---------------------------------------------------------------- Unity Catalog
    def _uc_get(self, kind: str, full_name: str) -> dict[str, Any]:
        parts = full_name.split(".")
        path = self.root.joinpath("Volumes", *parts)
        key = f"{kind}:{full_name}"
        if not path.is_dir():
            self._uc.pop(key, None)
            raise ApiError(404, "NOT_FOUND", f"{kind.capitalize()} '{full_name}' does not exist.")
        info = self._uc.get(key)
        if info is None:  # a folder created by hand under root: describe it
            info = self._uc_info(kind, parts, comment=None)
            self._uc[key] = info
        return info

    def _uc_info(self, kind: str, parts: list[str], comment: str | None, **extra: Any) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        info: dict[str, Any] = {
            "name": parts[-1],
            "full_name": ".".join(parts),
            "owner": "emulator@example.com",
            "created_at": now_ms,
            "updated_at": now_ms,
            "created_by": "emulator@example.com",
            "metastore_id": "00000000-0000-0000-0000-000000000000",
        }
        if comment is not None:
            info["comment"] = comment
        if kind in ("schema", "volume"):
            info["catalog_name"] = parts[0]
        if kind == "schema":
            info["schema_id"] = str(uuid.uuid4())
        if kind == "volume":
            info["schema_name"] = parts[1]
            info["volume_id"] = str(uuid.uuid4())
            info["volume_type"] = extra.get("volume_type") or "MANAGED"
            info["storage_location"] = extra.get("storage_location") or f"emulator://{'/'.join(parts)}"
        return info

    @staticmethod
    def _check_name(name: str) -> None:
        if not name or "/" in name or "." in name or name in ("..",) or "\x00" in name:
            raise bad_request(f"Invalid name: {name!r}")

    def _uc_create(self, kind: str, parts: list[str], exist_ok: bool, **extra: Any) -> dict[str, Any]:
        for p in parts:
            self._check_name(p)
        full = ".".join(parts)
        with self._lock:
            if len(parts) > 1:
                parent_kind = "catalog" if len(parts) == 2 else "schema"
                self._uc_get(parent_kind, ".".join(parts[:-1]))
            path = self.root.joinpath("Volumes", *parts)
            if path.is_dir():
                if exist_ok:
                    return self._uc_get(kind, full)
                raise ApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"{kind.capitalize()} '{full}' already exists."
                )
            path.mkdir()
            info = self._uc_info(kind, parts, extra.pop("comment", None), **extra)
            self._uc[f"{kind}:{full}"] = info
            self._save_uc()
            return info

    def create_catalog(self, name: str, comment: str | None = None, exist_ok: bool = False) -> dict[str, Any]:
        return self._uc_create("catalog", [name], exist_ok, comment=comment)

    def create_schema(
        self, catalog: str, name: str, comment: str | None = None, exist_ok: bool = False
    ) -> dict[str, Any]:
        return self._uc_create("schema", [catalog, name], exist_ok, comment=comment)

    def create_volume(
        self,
        catalog: str,
        schema: str,
        name: str,
        volume_type: str | None = None,
        storage_location: str | None = None,
        comment: str | None = None,
        exist_ok: bool = False,
    ) -> dict[str, Any]:
        if volume_type not in (None, "MANAGED", "EXTERNAL"):
            raise bad_request("volume_type must be MANAGED or EXTERNAL")
        return self._uc_create(
            "volume",
            [catalog, schema, name],
            exist_ok,
            volume_type=volume_type,
            storage_location=storage_location,
            comment=comment,
        )

    def get_uc(self, kind: str, full_name: str) -> dict[str, Any]:
        with self._lock:
            return self._uc_get(kind, full_name)

    def list_uc(self, kind: str, parent: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            base = self.root.joinpath("Volumes", *parent)
            if not base.is_dir():
                what = "Catalog" if len(parent) == 1 else "Schema"
                raise ApiError(404, "NOT_FOUND", f"{what} '{'.'.join(parent)}' does not exist.")
            names = sorted(e.name for e in os.scandir(base) if e.is_dir())
            return [self._uc_get(kind, ".".join([*parent, n])) for n in names]

    def delete_uc(self, kind: str, full_name: str, force: bool = False) -> None:
        with self._lock:
            self._uc_get(kind, full_name)
            path = self.root.joinpath("Volumes", *full_name.split("."))
            if kind != "volume" and any(path.iterdir()) and not force:
                raise ApiError(
                    400, "INVALID_STATE", f"{kind.capitalize()} '{full_name}' is not empty; use force=true."
                )
            shutil.rmtree(path)
            prefix = f"{full_name}."
            for key in list(self._uc):
                name = key.split(":", 1)[1]
                if name == full_name or name.startswith(prefix):
                    del self._uc[key]
            self._save_uc()

    def iter_files(self) -> Iterator[tuple[str, FileMeta]]:
        """Every file under /Volumes with its metadata (for the inspect endpoint and tests)."""
        base = self.root / "Volumes"
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                p = Path(dirpath) / name
                st = p.stat()
                yield "/" + str(p.relative_to(self.root)), FileMeta(st.st_size, st.st_mtime_ns, etag_of(st))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    tmp.replace(path)


def _copy_all(src_fd: int, dst_fd: int, size: int, src_offset: int = 0) -> None:
    copied = 0
    while copied < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - copied, src_offset + copied)
        except (AttributeError, OSError):
            n = os.sendfile(dst_fd, src_fd, src_offset + copied, size - copied)
        if n == 0:
            raise OSError(f"short copy: {copied} of {size} bytes")
        copied += n
