"""Typed, versioned checkpoints of long transfers, serialised to small JSON.

A checkpoint is a hint, the server is the truth: it says which parts the remote session should hold and
which source it was made from, so a retry (maybe on another worker) can ask the server, verify, and
send only what is missing. It never holds a credential: no token, SAS or presigned URL, only the
session id that lets an authenticated client mint fresh URLs.

Upload parts are stored in segments of ``SEGMENT_PARTS`` parts, ETags and SHA-256 digests packed as
base64, so a segment of 1,000 parts stays under the Airflow task state store's 64 KiB advisory limit
and a finished part rewrites one segment, not the whole checkpoint.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from airflow_databricks_transfer.engine.errors import CheckpointError, SourceChangedError

SCHEMA = "airflow-databricks-transfer/checkpoint"
# 2: uploads record the destination's version before the session and the session's start time
SCHEMA_VERSION = 2
SEGMENT_PARTS = 1000
_HEX_ETAG = re.compile(r'^"[0-9a-f]{32}"$')


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """v1 uploads knew nothing of the destination before their session: record that as unknown."""
    out = {**d, "version": 2}
    if d.get("kind") == "files_api.upload":
        out.update(session_started_at=None, pre_upload=None)
    return out


# version -> function turning a dict of that version into the next one
UPGRADERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

# Download checkpoints are versioned on their own (v2 added boot_id, durable and data_pin), so each
# kind's schema can move without forcing an upgrade of the other.
DOWNLOAD_SCHEMA_VERSION = 2


def _download_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    # A v1 writer recorded chunks without making them durable first and did not note the boot:
    # such chunks may be holes after a host crash, so a resume must treat them as unproven.
    return {**d, "version": 2, "boot_id": None, "durable": False, "data_pin": None}


DOWNLOAD_UPGRADERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _download_v1_to_v2}


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies the source a transfer was planned for.

    A local file is (path, size, mtime, inode); a remote source (a blob, a Volume file) is its URI, size
    and ``version`` (the ETag or Last-Modified it was pinned to), with mtime and inode 0.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    version: str | None = None

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> SourceFingerprint:
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)

    def difference(self, other: SourceFingerprint) -> str | None:
        """Why ``other`` is not the same source, or None."""
        if self.path != other.path:
            return f"source path changed ({self.path} -> {other.path})"
        if self.size != other.size:
            return f"source size changed ({self.size} -> {other.size} bytes)"
        if self.mtime_ns != other.mtime_ns:
            return "source modification time changed"
        if self.inode != other.inode:
            return "source file was replaced (inode changed)"
        if self.version != other.version:
            return f"source version changed ({self.version} -> {other.version})"
        return None

    def ensure_unchanged(self) -> None:
        try:
            now = SourceFingerprint.of(self.path)
        except FileNotFoundError:
            raise SourceChangedError(f"source {self.path} disappeared during the transfer") from None
        why = self.difference(now)
        if why:
            raise SourceChangedError(f"{why} during the transfer of {self.path}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
        }
        if self.version is not None:
            d["version"] = self.version
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceFingerprint:
        return cls(
            str(d["path"]),
            int(d["size"]),
            int(d["mtime_ns"]),
            int(d["inode"]),
            _header_safe(_opt_str(d.get("version"))),
        )


@dataclass(frozen=True)
class RemoteVersion:
    """What pins a remote object: never splice bytes of two versions."""

    size: int
    etag: str | None
    last_modified: str | None
    # the whole object's MD5 (base64) where the store keeps one (Azure Content-MD5): checked after a download
    content_md5: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size": self.size, "etag": self.etag, "last_modified": self.last_modified}
        if self.content_md5 is not None:
            d["content_md5"] = self.content_md5
        return d

    @property
    def last_modified_s(self) -> int | None:
        """Last-Modified as whole epoch seconds (its wire resolution), or None if absent or unparsable."""
        if not self.last_modified:
            return None
        try:
            return int(email.utils.parsedate_to_datetime(self.last_modified).timestamp())
        except (TypeError, ValueError, IndexError):
            return None

    def same_version_as(self, other: RemoteVersion) -> bool:
        """Could these be one version? ETags decide when both have one; else size and Last-Modified.

        Without ETags two writes of the same size in the same second look alike: that reads as "same",
        the answer that never lets an old object pass for a new one.
        """
        if self.etag and other.etag:
            return self.etag == other.etag
        return self.size == other.size and self.last_modified_s == other.last_modified_s

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteVersion:
        return cls(int(d["size"]), d.get("etag"), d.get("last_modified"), _opt_str(d.get("content_md5")))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def pack_etags(etags: list[str]) -> dict[str, Any]:
    if etags and all(_HEX_ETAG.match(e) for e in etags):
        return {"fmt": "quoted-hex16", "b64": _b64(b"".join(bytes.fromhex(e[1:-1]) for e in etags))}
    return {"fmt": "list", "items": etags}


def unpack_etags(packed: Mapping[str, Any], count: int) -> list[str]:
    if packed["fmt"] == "quoted-hex16":
        raw = _unb64(packed["b64"])
        if len(raw) != 16 * count:
            raise CheckpointError("packed ETags do not match the finished-part count")
        return [f'"{raw[i : i + 16].hex()}"' for i in range(0, len(raw), 16)]
    if packed["fmt"] == "list":
        items = [str(e) for e in packed["items"]]
        if len(items) != count:
            raise CheckpointError("ETag list does not match the finished-part count")
        return items
    raise CheckpointError(f"unknown ETag packing {packed['fmt']!r}")


def _bitmap(numbers: list[int], first: int, count: int) -> bytes:
    bits = bytearray((count + 7) // 8)
    for n in numbers:
        i = n - first
        bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def _from_bitmap(bits: bytes, first: int, count: int) -> list[int]:
    return [first + i for i in range(count) if bits[i // 8] >> (i % 8) & 1]


# What each kind of checkpoint is for. A checkpoint resumes only a transfer of its own kind: a Blob ->
# Volume checkpoint never resumes a local -> Volume upload of the same destination.
UPLOAD_KINDS = frozenset(
    {"files_api.upload", "azure_blob.upload", "azure_blob.to_volume", "volume.to_azure_blob"}
)
DOWNLOAD_KINDS = frozenset({"files_api.download", "azure_blob.download"})


@dataclass(frozen=True)
class UploadCheckpoint:
    destination: str
    source: SourceFingerprint
    part_size: int
    part_count: int
    session_token: str
    protocol: Literal["multipart", "resumable"] = "multipart"
    # multipart: part number -> ETag; resumable: the confirmed byte offset
    parts: Mapping[int, str] = field(default_factory=dict)
    part_sha256: Mapping[int, bytes] = field(default_factory=dict)
    confirmed_bytes: int = 0
    phase: Literal["uploading", "completing"] = "uploading"
    created_at: float = field(default_factory=time.time)
    # What the destination was just before the session began (None: no file) and when it began
    # (client clock, taken before that stat). A lost session is accepted as completed only for a
    # remote that provably differs from ``pre_upload``; ``session_started_at`` None (a checkpoint
    # upgraded from v1) means both are unknown, so nothing can be proven.
    pre_upload: RemoteVersion | None = None
    session_started_at: float | None = None
    version: int = SCHEMA_VERSION
    kind: str = "files_api.upload"

    def __post_init__(self) -> None:
        if self.kind not in UPLOAD_KINDS:
            raise CheckpointError(f"unknown upload checkpoint kind {self.kind!r}")
        if self.part_size <= 0 or self.part_count <= 0:
            raise CheckpointError("part size and count must be positive")
        bad = [n for n in self.parts if not 1 <= n <= self.part_count]
        if bad:
            raise CheckpointError(f"part numbers outside 1..{self.part_count}: {bad[:5]}")

    # -- progress
    def with_part(self, number: int, etag: str, sha256: bytes | None = None) -> UploadCheckpoint:
        parts = dict(self.parts)
        parts[number] = etag
        digests = self.part_sha256
        if sha256 is not None:
            digests = {**self.part_sha256, number: sha256}
        return replace(self, parts=parts, part_sha256=digests)

    def missing_parts(self) -> list[int]:
        return [n for n in range(1, self.part_count + 1) if n not in self.parts]

    @property
    def bytes_done(self) -> int:
        if self.protocol == "resumable":
            return self.confirmed_bytes
        last = self.part_count
        tail = self.source.size - (last - 1) * self.part_size
        return sum(self.part_size if n != last else tail for n in self.parts)

    def progress_view(self) -> dict[str, Any]:
        """A credential-free summary for the UI (XCom mirror, logs)."""
        total = self.source.size
        done = self.bytes_done
        return {
            "kind": self.kind,
            "destination": self.destination,
            "source": self.source.path,
            "phase": self.phase,
            "parts_done": len(self.parts) if self.protocol == "multipart" else None,
            "part_count": self.part_count,
            "bytes_done": done,
            "bytes_total": total,
            "percent": round(100.0 * done / total, 1) if total else 100.0,
        }

    # -- serialisation
    def segment_of(self, part_number: int) -> int:
        return (part_number - 1) // SEGMENT_PARTS

    @property
    def segment_count(self) -> int:
        return (self.part_count + SEGMENT_PARTS - 1) // SEGMENT_PARTS

    def segment_record(self, index: int) -> dict[str, Any]:
        first = index * SEGMENT_PARTS + 1
        count = min(SEGMENT_PARTS, self.part_count - first + 1)
        done = sorted(n for n in self.parts if first <= n < first + count)
        record: dict[str, Any] = {
            "first": first,
            "count": count,
            "done": _b64(_bitmap(done, first, count)),
            "etags": pack_etags([self.parts[n] for n in done]),
        }
        if self.part_sha256:
            missing = [n for n in done if n not in self.part_sha256]
            if missing:
                raise CheckpointError(f"parts {missing[:5]} lack a SHA-256 while others have one")
            record["sha256"] = _b64(b"".join(self.part_sha256[n] for n in done))
        return record

    def head_record(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": self.version,
            "kind": self.kind,
            "destination": self.destination,
            "source": self.source.to_dict(),
            "part_size": self.part_size,
            "part_count": self.part_count,
            "protocol": self.protocol,
            "session_token": self.session_token,
            "confirmed_bytes": self.confirmed_bytes,
            "phase": self.phase,
            "created_at": self.created_at,
            "session_started_at": self.session_started_at,
            "pre_upload": self.pre_upload.to_dict() if self.pre_upload is not None else None,
            "segments": self.segment_count,
        }

    def to_dict(self) -> dict[str, Any]:
        """One self-contained document (segments inline)."""
        head = self.head_record()
        head["segments"] = [self.segment_record(i) for i in range(self.segment_count)]
        return head

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kind: str = "files_api.upload") -> UploadCheckpoint:
        """Load a checkpoint of ``kind`` (the transfer about to run); any other kind is refused."""
        d = _upgrade(data, kind)
        try:
            segments = d["segments"]
            if not isinstance(segments, list):
                raise CheckpointError("segments are not inline; load them with from_records")
            parts: dict[int, str] = {}
            digests: dict[int, bytes] = {}
            for seg in segments:
                first, count = int(seg["first"]), int(seg["count"])
                done = _from_bitmap(_unb64(seg["done"]), first, count)
                parts.update(zip(done, unpack_etags(seg["etags"], len(done)), strict=True))
                if "sha256" in seg:
                    raw = _unb64(seg["sha256"])
                    if len(raw) != 32 * len(done):
                        raise CheckpointError("packed SHA-256 digests do not match the finished parts")
                    digests.update((n, raw[i * 32 : (i + 1) * 32]) for i, n in enumerate(done))
            return cls(
                destination=str(d["destination"]),
                source=SourceFingerprint.from_dict(d["source"]),
                part_size=int(d["part_size"]),
                part_count=int(d["part_count"]),
                session_token=str(d["session_token"]),
                protocol=d.get("protocol", "multipart"),
                parts=parts,
                part_sha256=digests,
                confirmed_bytes=int(d.get("confirmed_bytes", 0)),
                phase=d.get("phase", "uploading"),
                created_at=float(d["created_at"]),
                pre_upload=RemoteVersion.from_dict(d["pre_upload"]) if d["pre_upload"] else None,
                session_started_at=(
                    float(d["session_started_at"]) if d["session_started_at"] is not None else None
                ),
                version=SCHEMA_VERSION,
                kind=kind,
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"corrupt upload checkpoint: {err!r}") from err

    @classmethod
    def from_json(cls, text: str, kind: str = "files_api.upload") -> UploadCheckpoint:
        return cls.from_dict(_loads(text), kind)

    @classmethod
    def from_records(
        cls, head: Mapping[str, Any], segments: Sequence[Mapping[str, Any]], kind: str = "files_api.upload"
    ) -> UploadCheckpoint:
        """Rebuild from a head record and its separately stored segments."""
        return cls.from_dict({**head, "segments": list(segments)}, kind)

    def validate_for(self, destination: str, source: SourceFingerprint) -> str | None:
        """Why this checkpoint cannot resume an upload of ``source`` to ``destination``, or None."""
        if self.destination != destination:
            return f"checkpoint is for {self.destination}, not {destination}"
        return self.source.difference(source)


@dataclass(frozen=True)
class DownloadCheckpoint:
    source: str
    remote: RemoteVersion
    destination: str
    temp_path: str
    offset: int
    length: int
    chunk_size: int
    done_chunks: frozenset[int] = frozenset()
    created_at: float = field(default_factory=time.time)
    # the host boot (/proc/sys/kernel/random/boot_id) the checkpoint was last written in
    boot_id: str | None = None
    # True when every chunk named was made durable (fdatasync) before this checkpoint was written;
    # only then may a resume after a host restart trust the chunks on disk
    durable: bool = False
    # an opaque validator of the data path learnt by the source (a storage ETag), so a resumed try
    # reads the very same object version even where the metadata call shows no ETag
    data_pin: str | None = None
    version: int = DOWNLOAD_SCHEMA_VERSION
    kind: str = "files_api.download"

    def __post_init__(self) -> None:
        if self.kind not in DOWNLOAD_KINDS:
            raise CheckpointError(f"unknown download checkpoint kind {self.kind!r}")

    @property
    def chunk_count(self) -> int:
        return max(1, (self.length + self.chunk_size - 1) // self.chunk_size) if self.length else 0

    def with_chunk(self, index: int) -> DownloadCheckpoint:
        return replace(self, done_chunks=self.done_chunks | {index})

    @property
    def bytes_done(self) -> int:
        last = self.chunk_count - 1
        tail = self.length - last * self.chunk_size
        return sum(self.chunk_size if i != last else tail for i in self.done_chunks)

    def progress_view(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "destination": self.destination,
            "chunks_done": len(self.done_chunks),
            "chunk_count": self.chunk_count,
            "bytes_done": self.bytes_done,
            "bytes_total": self.length,
            "percent": round(100.0 * self.bytes_done / self.length, 1) if self.length else 100.0,
        }

    def to_dict(self) -> dict[str, Any]:
        count = self.chunk_count
        return {
            "schema": SCHEMA,
            "version": self.version,
            "kind": self.kind,
            "source": self.source,
            "remote": self.remote.to_dict(),
            "destination": self.destination,
            "temp_path": self.temp_path,
            "offset": self.offset,
            "length": self.length,
            "chunk_size": self.chunk_size,
            "done": _b64(_bitmap(sorted(self.done_chunks), 0, count)),
            "created_at": self.created_at,
            "boot_id": self.boot_id,
            "durable": self.durable,
            "data_pin": self.data_pin,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kind: str = "files_api.download") -> DownloadCheckpoint:
        """Load a checkpoint of ``kind`` (the transfer about to run); any other kind is refused."""
        d = _upgrade(data, kind, DOWNLOAD_SCHEMA_VERSION, DOWNLOAD_UPGRADERS)
        try:
            length, chunk = int(d["length"]), int(d["chunk_size"])
            if chunk <= 0 or length < 0:
                raise CheckpointError("chunk size and length must be positive")
            count = max(1, (length + chunk - 1) // chunk) if length else 0
            return cls(
                source=str(d["source"]),
                remote=RemoteVersion.from_dict(d["remote"]),
                destination=str(d["destination"]),
                temp_path=str(d["temp_path"]),
                offset=int(d["offset"]),
                length=length,
                chunk_size=chunk,
                done_chunks=frozenset(_from_bitmap(_unb64(d["done"]), 0, count)),
                created_at=float(d["created_at"]),
                boot_id=_opt_str(d["boot_id"]),
                durable=_strict_bool(d["durable"]),
                data_pin=_header_safe(_opt_str(d["data_pin"])),
                kind=kind,
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"corrupt download checkpoint: {err!r}") from err

    @classmethod
    def from_json(cls, text: str, kind: str = "files_api.download") -> DownloadCheckpoint:
        return cls.from_dict(_loads(text), kind)


def _loads(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"checkpoint is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError("checkpoint is not a JSON object")
    return data


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise CheckpointError(f"expected a string or null, got {value!r}")
    return value


_PRINTABLE = re.compile(r"^[\x20-\x7e]{1,1024}$")


def _header_safe(value: str | None) -> str | None:
    # the pin goes back into a request header (If-Match): a crafted one must not inject a line
    if value is not None and not _PRINTABLE.match(value):
        raise CheckpointError("data_pin must be 1-1024 printable ASCII characters")
    return value


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CheckpointError(f"expected true or false, got {value!r}")
    return value


def _upgrade(
    data: Mapping[str, Any],
    kind: str,
    current: int | None = None,
    upgraders: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Check identity and bring an older schema version up to the current one (of ``kind``)."""
    current = SCHEMA_VERSION if current is None else current
    upgraders = UPGRADERS if upgraders is None else upgraders
    if not isinstance(data, Mapping):
        raise CheckpointError("checkpoint is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise CheckpointError(f"not a checkpoint of this package (schema {data.get('schema')!r})")
    if data.get("kind") != kind:
        raise CheckpointError(f"checkpoint is a {data.get('kind')!r}, expected {kind!r}")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint has an invalid schema version {version!r}")
    if version > current:
        raise CheckpointError(
            f"checkpoint schema version {version} is newer than this package understands ({current}); "
            "was it written by a newer release?"
        )
    d = dict(data)
    while d["version"] < current:
        upgrade = upgraders.get(d["version"])
        if upgrade is None:
            raise CheckpointError(f"no upgrade path from checkpoint schema version {d['version']}")
        d = upgrade(d)
    return d


# Streaming ingestion (Zerobus) checkpoints are versioned on their own: the SDK's offsets restart at 0 on
# every stream, so what is stored is the position in the *source* after the last acknowledged record.
INGEST_SCHEMA_VERSION = 1
INGEST_UPGRADERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
INGEST_KINDS = frozenset({"zerobus.ingest"})
IngestFormat = Literal["jsonl", "csv", "parquet", "records"]
# the keys of a position in each source format (the position AFTER the last acknowledged record)
POSITION_KEYS: Mapping[str, tuple[str, ...]] = {
    "jsonl": ("byte", "line"),
    "csv": ("byte", "row"),
    "parquet": ("row_group", "row"),
    "records": ("index",),
}


@dataclass(frozen=True)
class SourceIdentity:
    """What identifies the records an ingest reads: a file's URI, size and mtime, or, for records held
    in memory (XCom, a callable), their count and a SHA-256 ``digest`` of their content.

    It also seeds the optional de-duplication key (``key_prefix``), so the key of a record is the
    same in every try and different for another file or another version of the file.
    """

    uri: str
    size: int
    mtime_ns: int | None = None
    digest: str | None = None

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], uri: str | None = None) -> SourceIdentity:
        """A local file; ``uri`` names where it came from when it is a downloaded copy (``/Volumes/...``)."""
        st = os.stat(path)
        return cls(uri or os.path.abspath(path), st.st_size, st.st_mtime_ns)

    def difference(self, other: SourceIdentity) -> str | None:
        """Why ``other`` is not the same source, or None."""
        if self.uri != other.uri:
            return f"source changed ({self.uri} -> {other.uri})"
        if self.size != other.size:
            return f"source size changed ({self.size} -> {other.size})"
        if self.mtime_ns != other.mtime_ns:
            return "source modification time changed"
        if self.digest != other.digest:
            return "source content changed (digest differs)"
        return None

    def key_prefix(self) -> str:
        """16 hex digits of SHA-256 over the identity: the first half of every de-duplication key."""
        text = f"{self.uri}\n{self.size}\n{self.mtime_ns}\n{self.digest}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "size": self.size, "mtime_ns": self.mtime_ns, "digest": self.digest}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceIdentity:
        mtime = d["mtime_ns"]
        return cls(
            str(d["uri"]),
            _strict_int(d["size"]),
            None if mtime is None else _strict_int(mtime),
            _opt_str(d["digest"]),
        )


@dataclass(frozen=True)
class IngestCheckpoint:
    """How far a streaming ingest got: the source position after the last record the server
    acknowledged as durable (a flush returned). A resume reads on from there, so a record is never
    lost; records sent after it and not yet acknowledged when the try died are sent again."""

    table: str
    source: SourceIdentity
    format: IngestFormat
    position: Mapping[str, int]
    records_acked: int = 0
    batches_acked: int = 0
    dead_lettered: int = 0
    created_at: float = field(default_factory=time.time)
    version: int = INGEST_SCHEMA_VERSION
    kind: str = "zerobus.ingest"

    def __post_init__(self) -> None:
        if self.kind not in INGEST_KINDS:
            raise CheckpointError(f"unknown ingest checkpoint kind {self.kind!r}")
        keys = POSITION_KEYS.get(self.format)
        if keys is None:
            raise CheckpointError(f"unknown ingest source format {self.format!r}")
        if set(self.position) != set(keys):
            raise CheckpointError(
                f"a {self.format} position has the keys {list(keys)}, not {sorted(self.position)}"
            )
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in self.position.values()):
            raise CheckpointError(f"position values must be non-negative integers: {dict(self.position)}")
        if min(self.records_acked, self.batches_acked, self.dead_lettered) < 0:
            raise CheckpointError("counters must be non-negative")

    def progress_view(self) -> dict[str, Any]:
        """A credential-free summary for the UI (XCom mirror, logs)."""
        view: dict[str, Any] = {
            "kind": self.kind,
            "table": self.table,
            "source": self.source.uri,
            "format": self.format,
            "position": dict(self.position),
            "records_acked": self.records_acked,
            "batches_acked": self.batches_acked,
            "dead_lettered": self.dead_lettered,
        }
        if "byte" in self.position and self.format != "records":
            done, total = self.position["byte"], self.source.size
            view.update(
                bytes_done=done,
                bytes_total=total,
                percent=round(100.0 * done / total, 1) if total else 100.0,
            )
        return view

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": self.version,
            "kind": self.kind,
            "table": self.table,
            "source": self.source.to_dict(),
            "format": self.format,
            "position": {k: self.position[k] for k in POSITION_KEYS[self.format]},
            "records_acked": self.records_acked,
            "batches_acked": self.batches_acked,
            "dead_lettered": self.dead_lettered,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kind: str = "zerobus.ingest") -> IngestCheckpoint:
        """Load a checkpoint of ``kind`` (the ingest about to run); any other kind is refused."""
        d = _upgrade(data, kind, INGEST_SCHEMA_VERSION, INGEST_UPGRADERS)
        try:
            position = d["position"]
            if not isinstance(position, Mapping):
                raise CheckpointError("position is not an object")
            return cls(
                table=_req_str(d["table"]),
                source=SourceIdentity.from_dict(d["source"]),
                format=d["format"],
                position={str(k): _strict_int(v) for k, v in position.items()},
                records_acked=_strict_int(d["records_acked"]),
                batches_acked=_strict_int(d["batches_acked"]),
                dead_lettered=_strict_int(d["dead_lettered"]),
                created_at=float(d["created_at"]),
                kind=kind,
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"corrupt ingest checkpoint: {err!r}") from err

    @classmethod
    def from_json(cls, text: str, kind: str = "zerobus.ingest") -> IngestCheckpoint:
        return cls.from_dict(_loads(text), kind)

    def validate_for(self, table: str, source: SourceIdentity) -> str | None:
        """Why this checkpoint cannot resume an ingest of ``source`` into ``table``, or None."""
        if self.table != table:
            return f"checkpoint is for table {self.table}, not {table}"
        return self.source.difference(source)


def _strict_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"expected an integer, got {value!r}")
    return value


def _req_str(value: Any) -> str:
    if not isinstance(value, str):
        raise CheckpointError(f"expected a string, got {value!r}")
    return value
