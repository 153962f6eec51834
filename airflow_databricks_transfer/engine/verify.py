"""Checks a finished download must pass before it is renamed into place.

A download can be byte-exact and still useless (the blob itself was truncated when it was uploaded, or a
writer was still appending), and a right size proves nothing about the content. So after the bytes land we
check the size, the blob's Content-MD5 when it has one, and format verifiers: cheap structural checks that
read only headers and indexes, never the data, because model files are often many GiB.

Every check raises :class:`VerificationError` (fatal: fetching the same bytes again cannot help) with what
was expected and what was found. Nothing here deletes anything: the caller owns the partial file and
deletes it after a failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_databricks_transfer.engine.errors import TransferError, VerificationError

__all__ = [
    "AutoVerifier",
    "FileVerifier",
    "SafetensorsVerifier",
    "ZipArchiveVerifier",
    "check_md5",
    "check_size",
    "file_md5",
    "pytorch_verifier",
    "resolve_verifiers",
    "run_verifiers",
    "verifiers_for",
]


class FileVerifier(Protocol):
    """A check of a finished file; raises :class:`VerificationError` saying what is wrong."""

    @property
    def name(self) -> str: ...

    def __call__(self, path: str, size: int) -> None: ...


VerifierSpec = str | FileVerifier | Callable[[str, int], None]


# --- size and Content-MD5 -------------------------------------------------------------------------------


def check_size(path: str, expected: int) -> None:
    """The file on disk has exactly the remote object's length."""
    actual = os.stat(path).st_size
    if actual != expected:
        raise VerificationError(f"{path}: expected {expected} bytes, file has {actual}")


def file_md5(path: str, chunk_bytes: int = 1 << 20) -> bytes:
    """MD5 of a whole file, for callers that did not hash while writing (Content-MD5 is MD5 by spec)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.digest()


def _md5_bytes(value: str | bytes | bytearray) -> bytes:
    """Azure sends Content-MD5 as base64 text; the SDK hands it back as the raw 16 bytes. Accept both."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"the blob's Content-MD5 {value!r} is not base64 of an MD5 digest") from exc
    if len(raw) != 16:
        raise VerificationError(
            f"the blob's Content-MD5 decodes to {len(raw)} bytes, an MD5 digest has 16: {value!r}"
        )
    return raw


def check_md5(actual_md5: bytes, expected: str | bytes | bytearray, *, path: str = "") -> None:
    """The downloaded bytes' MD5 equals the blob's Content-MD5 (``expected``: base64 text or raw bytes)."""
    want = _md5_bytes(expected)
    if bytes(actual_md5) != want:
        where = f"{path}: " if path else ""
        raise VerificationError(
            f"{where}Content-MD5 mismatch: the blob says {base64.b64encode(want).decode()}, "
            f"the downloaded file has {base64.b64encode(bytes(actual_md5)).decode()}"
        )


# --- zip archives (PyTorch checkpoints) ----------------------------------------------------------------

# torch.save's pre-1.6 format is a pickle stream that starts with this magic number (pickled as a LONG1).
# It cannot be checked without unpickling, but it must not be rejected as "not a zip" either.
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_LOCAL_HEADER_BYTES = 30


@dataclass(frozen=True)
class ZipArchiveVerifier:
    """The file is a zip whose central directory reads and is consistent with the file.

    Only the central directory is read, so a multi-GiB checkpoint is checked in milliseconds; ``test_crc``
    additionally decompresses every member and checks its CRC (reads the whole file, off by default).
    ``require_entry_suffix`` demands a member named ``<suffix>`` or ``<dir>/<suffix>``: every torch.save
    and torch.jit.save zip has ``<archive>/data.pkl``. ``accept_legacy_torch`` lets the pre-1.6 (non-zip)
    torch.save format through, since a valid old checkpoint must not be deleted as corrupt.
    """

    require_entry_suffix: str | None = None
    test_crc: bool = False
    accept_legacy_torch: bool = False
    name: str = "zip"

    def __call__(self, path: str, size: int) -> None:
        with open(path, "rb") as f:
            head = f.read(64)
            if self.accept_legacy_torch and head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head:
                return
            file_len = os.fstat(f.fileno()).st_size
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    infos = zf.infolist()
                    self._check_layout(path, infos, getattr(zf, "start_dir", file_len))
                    self._check_entries(path, [i.filename for i in infos])
                    if self.test_crc:
                        bad = zf.testzip()
                        if bad is not None:
                            raise VerificationError(f"{path}: zip member {bad!r} fails its CRC check")
            except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, EOFError, OSError) as exc:
                raise VerificationError(
                    f"{path}: expected a zip archive ({self.name}) whose central directory reads, "
                    f"but it does not ({exc}); file has {file_len} bytes"
                ) from exc

    @staticmethod
    def _check_layout(path: str, infos: list[zipfile.ZipInfo], central_dir_at: int) -> None:
        # Each member's local header and data must end before the central directory starts; a directory
        # copied from another file, or one pointing past a hole, fails here without reading any data.
        for info in infos:
            end = info.header_offset + _ZIP_LOCAL_HEADER_BYTES + len(info.orig_filename) + info.compress_size
            if end > central_dir_at:
                raise VerificationError(
                    f"{path}: zip member {info.filename!r} claims bytes up to {end}, "
                    f"but the central directory starts at {central_dir_at}"
                )

    def _check_entries(self, path: str, names: list[str]) -> None:
        suffix = self.require_entry_suffix
        if suffix is None:
            return
        if not any(n == suffix or n.endswith("/" + suffix) for n in names):
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "no members"
            raise VerificationError(
                f"{path}: expected a {self.name} archive with a '<archive>/{suffix}' member, found {shown}"
            )


def pytorch_verifier() -> ZipArchiveVerifier:
    """The preset for .pt/.pth files written by torch.save (zip since torch 1.6, legacy pickle before)."""
    return ZipArchiveVerifier(require_entry_suffix="data.pkl", accept_legacy_torch=True, name="pytorch")


# --- safetensors ---------------------------------------------------------------------------------------

# Element widths in bits, as the safetensors format defines its dtypes (sub-byte types included).
_SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class SafetensorsVerifier:
    """The header parses and its tensors tile the data area exactly, ending at the end of the file.

    Reads the 8-byte length and the JSON header only. Every tensor's byte span must match its dtype and
    shape, and the spans must be contiguous without overlap from 0 to the end of the file, so a file cut
    anywhere (even by its last byte) or spliced from two versions fails with the lengths involved.
    """

    max_header_bytes: int = 100_000_000  # the limit the reference safetensors reader enforces
    name: str = field(default="safetensors")

    def __call__(self, path: str, size: int) -> None:
        with open(path, "rb") as f:
            file_len = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise VerificationError(
                    f"{path}: expected a safetensors file of at least 8 bytes (header length), "
                    f"file has {file_len}"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > self.max_header_bytes:
                raise VerificationError(
                    f"{path}: safetensors header length {header_len} exceeds the {self.max_header_bytes} "
                    f"byte limit; not a safetensors file or corrupt"
                )
            if 8 + header_len > file_len:
                raise VerificationError(
                    f"{path}: safetensors header claims {header_len} bytes, expected at least "
                    f"{8 + header_len} bytes, file has {file_len} (truncated)"
                )
            raw = f.read(header_len)
        header = self._parse_header(path, raw)
        data_len = self._check_tensors(path, header)
        expected = 8 + header_len + data_len
        if expected != file_len:
            raise VerificationError(
                f"{path}: safetensors size mismatch: expected {expected} bytes "
                f"(8 + {header_len} header + {data_len} tensor data), file has {file_len}"
            )

    @staticmethod
    def _parse_header(path: str, raw: bytes) -> dict[str, Any]:
        if not raw.startswith(b"{"):
            raise VerificationError(f"{path}: safetensors header must be a JSON object starting with '{{'")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
        except (UnicodeDecodeError, ValueError) as exc:
            raise VerificationError(f"{path}: safetensors header is not valid UTF-8 JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise VerificationError(f"{path}: safetensors header is not a JSON object")
        meta = header.get("__metadata__")
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise VerificationError(f"{path}: safetensors __metadata__ must map strings to strings")
        return header

    @staticmethod
    def _check_tensors(path: str, header: dict[str, Any]) -> int:
        """Validate each entry; returns the length of the data area the entries cover."""
        spans: list[tuple[int, int, str]] = []
        for tensor, info in header.items():
            if tensor == "__metadata__":
                continue
            where = f"{path}: safetensors tensor {tensor!r}"
            if not isinstance(info, dict):
                raise VerificationError(f"{where} is not an object")
            dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            bits = _SAFETENSORS_DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
            if bits is None:
                raise VerificationError(
                    f"{where}: unknown dtype {dtype!r}, expected one of {sorted(_SAFETENSORS_DTYPE_BITS)}"
                )
            if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
                raise VerificationError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
                raise VerificationError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
            begin, end = offsets
            if end < begin:
                raise VerificationError(f"{where}: data_offsets end {end} is before begin {begin}")
            total_bits = math.prod(shape) * bits
            if total_bits % 8:
                raise VerificationError(f"{where}: {dtype} shape {shape} does not fill whole bytes")
            if end - begin != total_bits // 8:
                raise VerificationError(
                    f"{where}: {dtype} shape {shape} needs {total_bits // 8} bytes, "
                    f"data_offsets {offsets} span {end - begin}"
                )
            spans.append((begin, end, tensor))
        cursor = 0
        for begin, end, tensor in sorted(spans):
            if begin < cursor:
                raise VerificationError(
                    f"{path}: safetensors tensor {tensor!r} at [{begin}, {end}] overlaps the previous "
                    f"tensor, which ends at {cursor}"
                )
            if begin > cursor:
                raise VerificationError(
                    f"{path}: safetensors data has a hole: bytes [{cursor}, {begin}] belong to no tensor "
                    f"(next is {tensor!r})"
                )
            cursor = end
        return cursor


# --- choosing and running verifiers --------------------------------------------------------------------


def verifiers_for(path: str) -> list[FileVerifier]:
    """The built-in format verifiers that apply to a file by its extension (none for unknown ones)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        return [pytorch_verifier()]
    if ext == ".safetensors":
        return [SafetensorsVerifier()]
    return []


@dataclass(frozen=True)
class AutoVerifier:
    """Picks the verifiers by the file's extension when it runs, so one spec serves many files."""

    name: str = "auto"

    def __call__(self, path: str, size: int) -> None:
        run_verifiers(path, size, verifiers_for(path))


@dataclass(frozen=True)
class _CallableVerifier:
    """Gives a plain function the ``name`` that error messages and logs use."""

    fn: Callable[[str, int], None]
    name: str

    def __call__(self, path: str, size: int) -> None:
        self.fn(path, size)


_BUILTIN: dict[str, Callable[[], FileVerifier]] = {
    "auto": AutoVerifier,
    "zip": ZipArchiveVerifier,
    "pytorch": pytorch_verifier,
    "safetensors": SafetensorsVerifier,
}


def _from_name(name: str) -> FileVerifier:
    factory = _BUILTIN.get(name.strip().lower())
    if factory is None:
        raise ValueError(
            f"unknown verifier {name.strip()!r}; known: {', '.join(sorted(_BUILTIN))}, "
            f"'none', or a callable (path, size) -> None"
        )
    return factory()


def _from_callable(item: Callable[[str, int], None]) -> FileVerifier:
    name = getattr(item, "name", None)
    if isinstance(name, str):
        return item  # type: ignore[return-value]  # already a FileVerifier
    return _CallableVerifier(item, getattr(item, "__name__", type(item).__name__))


def resolve_verifiers(spec: VerifierSpec | Sequence[VerifierSpec] | None) -> list[FileVerifier]:
    """Turn an operator's ``verify`` argument into verifiers.

    Accepts None or "none" (no format checks), "auto" (by extension, per file), a built-in name ("zip",
    "pytorch", "safetensors"), a comma-separated string of those (Airflow renders templates to strings),
    a callable ``(path, size) -> None``, or a list mixing them. Unknown names raise ValueError at once.
    """
    if spec is None:
        return []
    items: list[VerifierSpec] = [spec] if isinstance(spec, str) or callable(spec) else list(spec)
    out: list[FileVerifier] = []
    for item in items:
        if isinstance(item, str):
            names = [n for n in (part.strip() for part in item.split(",")) if n]
            out += [_from_name(n) for n in names if n.lower() != "none"]
        elif callable(item):
            out.append(_from_callable(item))
        else:
            raise ValueError(f"a verifier must be a name or a callable (path, size) -> None, got {item!r}")
    return out


def run_verifiers(path: str, size: int, verifiers: Sequence[FileVerifier]) -> None:
    """Run the verifiers in order; the first failure raises :class:`VerificationError`.

    A user verifier that raises anything else (an assert, a ValueError) is reported as a verification
    failure of that verifier, so the transfer fails as fatal rather than being retried. This does not
    delete the file: the caller removes the partial after a failure.
    """
    for verifier in verifiers:
        name = getattr(verifier, "name", None) or getattr(verifier, "__name__", repr(verifier))
        try:
            verifier(path, size)
        except TransferError:
            raise
        except Exception as exc:  # a user's verifier may raise anything: report it as fatal
            raise VerificationError(
                f"{path}: verifier {name!r} rejected the file: {type(exc).__name__}: {exc}"
            ) from exc
