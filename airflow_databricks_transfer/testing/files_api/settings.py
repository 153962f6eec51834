"""Server-side knobs of the Files API emulator, settable at start and through the control plane."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

MiB = 1024 * 1024
GiB = 1024 * MiB

UploadProtocol = Literal["multipart", "resumable"]
Cloud = Literal["AWS", "AZURE", "GCP"]
ListOrder = Literal["arbitrary", "sorted"]


@dataclass(frozen=True)
class EmulatorSettings:
    tokens: frozenset[str] = frozenset({"dapi-emulator"})
    read_only_tokens: frozenset[str] = frozenset()
    # What initiate-upload answers: S3/Azure-style multipart, or the legacy GCP resumable flow.
    upload_protocol: UploadProtocol = "multipart"
    # False answers 403 FILES_API_API_IS_NOT_ENABLED to every presigned-URL call (clients fall back).
    presigned_enabled: bool = True
    cloud: Cloud = "AWS"
    min_part_size_bytes: int = 5 * MiB
    max_part_size_bytes: int = 5 * GiB
    max_parts: int = 10_000
    single_shot_max_bytes: int = 5 * GiB
    session_ttl_s: float = 7 * 24 * 3600.0
    max_url_ttl_s: float = 7 * 24 * 3600.0
    list_page_size_max: int = 1000
    workspace_id: str | None = "1234567890123456"
    # Files API paths must lie in a volume created through Unity Catalog (or seeded) unless this is on.
    auto_create_volumes: bool = False
    # Base URL minted into presigned URLs; None means this server. A bench can point it at a faster sink.
    data_plane_url: str | None = None
    # Answer of GET /api/2.0/fs/endpoints; None answers 404 as workspaces without the API do.
    endpoints: tuple[Mapping[str, Any], ...] | None = None
    # Benchmark sink: multipart part bodies are read and dropped, and complete-upload makes a sparse
    # file of the right size (zeros). Only for measuring clients faster than a storing server.
    discard_part_bodies: bool = False
    # False (default, the harder reading: the reference never shows one): the workspace's own HEAD/GET
    # /fs/files send no ETag and ignore If-Match, as a server without ETags would. A client must pin a
    # download by the ETag its presigned GETs carry (cloud storage sends one and honours If-Match).
    # True: they send one and honour If-Match.
    files_api_etag: bool = False
    # Move request bodies socket -> pipe -> file with splice(2) where the platform has it.
    use_splice: bool = True
    default_catalogs: tuple[str, ...] = field(default=("main",))
    # False (default, the real 1 s resolution): a write is stamped with the second it happens,
    # so a rewrite within one second keeps the Last-Modified, and If-Unmodified-Since cannot see it.
    # True (kind): every write of a path lands in a later second than the version it replaces.
    last_modified_bump: bool = False
    # Test knob: None = real time; a Unix time = the server's clock stands still there for the
    # Date header and Last-Modified stamps, so any number of writes fall in one second on demand.
    frozen_clock_s: float | None = None
    # The server's clock = real time + this many whole seconds: used for expire_time and presigned-URL
    # expiry checks, Last-Modified (and listing last_modified) and the Date header, so a test can put
    # the client's clock ahead of (negative) or behind (positive) the server's. Whole seconds keep the
    # one-second boundaries of Last-Modified.
    clock_offset_s: int = 0
    # expire_time of create-upload-part-urls, create-download-url and create-abort-upload-url.
    # True (strict, unverified): it must be present, exactly YYYY-MM-DDTHH:MM:SSZ (the reference's and
    # the SDK's form) and later than the server's now, else 400 INVALID_PARAMETER_VALUE. False: missing
    # means now + 1 h, any ISO 8601 form is read, and a past time mints an already-expired URL.
    expire_time_strict: bool = True
    # Order of directory listings: the real one is unspecified, so "arbitrary" (a seeded hash of the
    # directory and name, stable across the pages of one listing); "sorted" by name is for humans.
    list_order: ListOrder = "arbitrary"
    list_order_seed: int = 0
    # The workspace's Files API limits (reference 7.2: ~10 concurrent requests, 100 requests/s),
    # enforced on /api/ routes with 429 REQUEST_LIMIT_EXCEEDED and Retry-After; 0 turns one off.
    rate_limit_concurrent: int = 10
    rate_limit_per_s: int = 100
    # Retry-After (seconds) sent with those 429s.
    rate_limit_retry_after_s: int = 1
    # A workspace-host data PUT (single-shot, storage-proxy part) whose body has no
    # Content-Length (chunked, or neither header). The real answer is unverified: True (the harder
    # reading) refuses it with 411, as every object store does; False stores it, and the size caps then
    # apply to the bytes actually received (413, connection closed, when exceeded).
    workspace_put_requires_length: bool = True
    # The headers create-upload-part-urls hands out with each part URL, as (name,
    # value) pairs; on AWS and GCP the URL's signature covers them, so a client must send them exactly.
    presigned_part_headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/octet-stream"),)

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("at least one accepted token is required")
        if self.upload_protocol not in ("multipart", "resumable"):
            raise ValueError("upload_protocol must be 'multipart' or 'resumable'")
        if self.cloud not in ("AWS", "AZURE", "GCP"):
            raise ValueError("cloud must be AWS, AZURE or GCP")
        if self.min_part_size_bytes < 0 or self.max_part_size_bytes < self.min_part_size_bytes:
            raise ValueError("part size limits are inconsistent")
        if not 1 <= self.max_parts <= 100_000:
            raise ValueError("max_parts must be in 1..100000")
        if self.session_ttl_s <= 0 or self.max_url_ttl_s <= 0:
            raise ValueError("lifetimes must be positive")
        if isinstance(self.clock_offset_s, bool) or not isinstance(self.clock_offset_s, int):
            raise ValueError("clock_offset_s must be a whole number of seconds")
        if self.list_order not in ("arbitrary", "sorted"):
            raise ValueError("list_order must be 'arbitrary' or 'sorted'")
        if self.rate_limit_concurrent < 0 or self.rate_limit_per_s < 0 or self.rate_limit_retry_after_s < 0:
            raise ValueError("rate limits must be >= 0 (0 turns a limit off)")

    def updated(self, changes: Mapping[str, Any]) -> EmulatorSettings:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        coerced = dict(changes)
        for key in ("tokens", "read_only_tokens"):
            if key in coerced:
                coerced[key] = frozenset(coerced[key])
        if coerced.get("endpoints") is not None:
            coerced["endpoints"] = tuple(coerced["endpoints"])
        if "default_catalogs" in coerced:
            coerced["default_catalogs"] = tuple(coerced["default_catalogs"])
        if "presigned_part_headers" in coerced:  # JSON from the control plane: a list of [name, value]
            coerced["presigned_part_headers"] = tuple(
                (str(name), str(value)) for name, value in coerced["presigned_part_headers"]
            )
        return replace(self, **coerced)

    def public(self) -> dict[str, Any]:
        """Settings without the accepted tokens, for the inspect endpoint."""
        data = asdict(self)
        data["tokens"] = len(self.tokens)
        data["read_only_tokens"] = len(self.read_only_tokens)
        data["endpoints"] = list(self.endpoints) if self.endpoints is not None else None
        data["default_catalogs"] = list(self.default_catalogs)
        return data
