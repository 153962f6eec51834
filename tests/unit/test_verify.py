"""Download verifiers against real files built by hand in the formats torch.save and safetensors write."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_databricks_transfer.engine.errors import FatalError, VerificationError
from airflow_databricks_transfer.engine.verify import (
    AutoVerifier,
    SafetensorsVerifier,
    ZipArchiveVerifier,
    check_md5,
    check_size,
    file_md5,
    pytorch_verifier,
    resolve_verifiers,
    run_verifiers,
    verifiers_for,
)

# --- builders ------------------------------------------------------------------------------------------


def torch_zip(path: Path, *, with_data_pkl: bool = True, archive: str = "archive") -> Path:
    """The layout torch.save (>= 1.6) writes: stored members under one top-level directory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        if with_data_pkl:
            zf.writestr(f"{archive}/data.pkl", pickle.dumps({"weight": ("storage", "0")}, protocol=2))
        zf.writestr(f"{archive}/data/0", np.arange(64, dtype=np.float32).tobytes())
        zf.writestr(f"{archive}/version", b"3\n")
        zf.writestr(f"{archive}/byteorder", b"little")
    return path


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise like the reference writer: offsets in order, header padded with spaces to 8 bytes."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    data = b""
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {
            "dtype": dtypes[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    hdr = json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    return struct.pack("<Q", len(hdr)) + hdr + data


def raw_safetensors(header: Any, data: bytes) -> bytes:
    hdr = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(hdr)) + hdr + data


GOOD_TENSORS: dict[str, np.ndarray] = {
    "embed.weight": np.arange(24, dtype=np.float32).reshape(4, 6),
    "embed.bias": np.ones(6, dtype=np.float16),
    "step": np.array(7, dtype=np.int64),  # a scalar: shape [] and one element
    "empty": np.zeros((0, 3), dtype=np.float32),  # zero-size tensors take no bytes
}


@pytest.fixture
def good_st(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(GOOD_TENSORS, {"format": "pt"}))
    return path


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def run(verifier: Any, path: Path | str) -> None:
    verifier(str(path), Path(path).stat().st_size)


# --- size and Content-MD5 ------------------------------------------------------------------------------


def test_check_size(tmp_path: Path) -> None:
    path = write(tmp_path, "f.bin", b"x" * 10)
    check_size(path, 10)
    with pytest.raises(VerificationError, match="expected 11 bytes, file has 10"):
        check_size(path, 11)


def test_check_md5_accepts_base64_text_and_raw_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "f.bin", b"hello blob")
    digest = hashlib.md5(b"hello blob").digest()
    assert file_md5(path) == digest
    assert file_md5(path, chunk_bytes=3) == digest  # several reads, same answer
    check_md5(file_md5(path), base64.b64encode(digest).decode())  # the header's form
    check_md5(file_md5(path), bytearray(digest))  # the SDK's content_settings.content_md5 form
    check_md5(file_md5(path), base64.b64encode(digest))


def test_check_md5_mismatch_names_both_values(tmp_path: Path) -> None:
    other = hashlib.md5(b"another").digest()
    actual = hashlib.md5(b"hello blob").digest()
    with pytest.raises(VerificationError, match="Content-MD5 mismatch") as err:
        check_md5(actual, base64.b64encode(other).decode(), path="x.bin")
    assert base64.b64encode(other).decode() in str(err.value)
    assert base64.b64encode(actual).decode() in str(err.value)
    assert isinstance(err.value, FatalError)


@pytest.mark.parametrize("bad", ["not base64!!", base64.b64encode(b"short").decode(), b"\x00" * 15])
def test_check_md5_rejects_malformed_content_md5(bad: str | bytes) -> None:
    with pytest.raises(VerificationError, match="Content-MD5"):
        check_md5(hashlib.md5(b"").digest(), bad)


# --- zip / pytorch -------------------------------------------------------------------------------------


def test_torch_zip_passes_zip_and_pytorch(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "model.pt")
    run(ZipArchiveVerifier(), path)
    run(pytorch_verifier(), path)
    run(ZipArchiveVerifier(test_crc=True), path)


def test_zip_without_data_pkl_fails_pytorch_but_is_a_zip(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "model.pt", with_data_pkl=False)
    run(ZipArchiveVerifier(), path)
    with pytest.raises(VerificationError, match=r"'<archive>/data.pkl' member, found archive/data/0"):
        run(pytorch_verifier(), path)


def test_entry_suffix_matches_whole_names_only(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/mydata.pkl", b"x")
    with pytest.raises(VerificationError, match=r"data\.pkl"):
        run(pytorch_verifier(), path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = write(tmp_path, "model.pt", b"this is an HTML error page, not a checkpoint" * 10)
    with pytest.raises(VerificationError, match=r"expected a zip archive \(pytorch\).*file has 440 bytes"):
        run(pytorch_verifier(), path)


@pytest.mark.parametrize("cut", ["half", "last_byte", "first_22"])
def test_truncated_zip_fails(tmp_path: Path, cut: str) -> None:
    full = torch_zip(tmp_path / "full.pt").read_bytes()
    keep = {"half": len(full) // 2, "last_byte": len(full) - 1, "first_22": 22}[cut]
    path = write(tmp_path, "cut.pt", full[:keep])
    with pytest.raises(VerificationError, match="expected a zip archive"):
        run(ZipArchiveVerifier(), path)


def test_zip_directory_pointing_past_its_data_fails(tmp_path: Path) -> None:
    # A central directory whose member claims more bytes than lie before the directory (a spliced file).
    full = bytearray(torch_zip(tmp_path / "full.pt").read_bytes())
    cd = full.rindex(b"PK\x01\x02")  # the last central directory entry
    (size,) = struct.unpack_from("<I", full, cd + 20)
    struct.pack_into("<II", full, cd + 20, size + 10_000, size + 10_000)
    path = write(tmp_path, "spliced.pt", bytes(full))
    with pytest.raises(VerificationError, match="claims bytes up to"):
        run(ZipArchiveVerifier(), path)


def test_test_crc_finds_corrupt_data_the_directory_check_cannot(tmp_path: Path) -> None:
    full = bytearray(torch_zip(tmp_path / "full.pt").read_bytes())
    payload = np.arange(64, dtype=np.float32).tobytes()
    at = full.index(payload)
    full[at + 5] ^= 0xFF
    path = write(tmp_path, "flipped.pt", bytes(full))
    run(ZipArchiveVerifier(), path)  # structure intact: the cheap check passes by design
    with pytest.raises(VerificationError, match=r"archive/data/0.*CRC"):
        run(ZipArchiveVerifier(test_crc=True), path)


def test_legacy_torch_pickle_accepted_by_pytorch_preset_only(tmp_path: Path) -> None:
    # torch.save(_use_new_zipfile_serialization=False) starts with its magic number pickled (protocol 2).
    data = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2) + b"..."
    path = write(tmp_path, "old.pth", data)
    run(pytorch_verifier(), path)
    with pytest.raises(VerificationError, match="expected a zip archive"):
        run(ZipArchiveVerifier(), path)
    other = write(tmp_path, "other.pth", pickle.dumps(12345, protocol=2))
    with pytest.raises(VerificationError, match="expected a zip archive"):
        run(pytorch_verifier(), other)


# --- safetensors ---------------------------------------------------------------------------------------


def test_good_safetensors_passes(good_st: Path) -> None:
    run(SafetensorsVerifier(), good_st)


def test_empty_safetensors_passes(tmp_path: Path) -> None:
    run(SafetensorsVerifier(), write(tmp_path, "e.safetensors", safetensors_bytes({})))


def test_truncated_safetensors_fails_everywhere(good_st: Path, tmp_path: Path) -> None:
    full = good_st.read_bytes()
    (n,) = struct.unpack("<Q", full[:8])
    cuts = {"in length": 5, "in header": 8 + n // 2, "header only": 8 + n, "in data": 8 + n + 10}
    cuts["last byte"] = len(full) - 1
    for label, keep in cuts.items():
        path = write(tmp_path, "cut.safetensors", full[:keep])
        with pytest.raises(VerificationError, match=f"file has {keep}") as err:
            run(SafetensorsVerifier(), path)
        if label in ("in data", "last byte", "header only"):
            assert f"expected {len(full)} bytes (8 + {n} header" in str(err.value), label


def test_safetensors_with_trailing_bytes_fails(good_st: Path, tmp_path: Path) -> None:
    full = good_st.read_bytes()
    path = write(tmp_path, "long.safetensors", full + b"\0")
    with pytest.raises(VerificationError, match=f"expected {len(full)} bytes .* file has {len(full) + 1}$"):
        run(SafetensorsVerifier(), path)


def test_header_length_over_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "h.safetensors", struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(VerificationError, match="header length 1099511627776 exceeds"):
        run(SafetensorsVerifier(), path)


def test_wrong_header_length(good_st: Path, tmp_path: Path) -> None:
    full = good_st.read_bytes()
    (n,) = struct.unpack("<Q", full[:8])
    pad = len(full[8 : 8 + n]) - len(full[8 : 8 + n].rstrip(b" "))
    body = full[8:]

    def with_length(length: int) -> str:
        return write(tmp_path, "s.safetensors", struct.pack("<Q", length) + body)

    # cut into the JSON, or reaching into the tensor bytes: the header no longer parses
    for length in (n - pad - 2, n + 4):
        with pytest.raises(VerificationError, match="not valid UTF-8 JSON"):
            run(SafetensorsVerifier(), with_length(length))
    # cut only the space padding: the JSON parses, but the layout no longer adds up to the file's length
    if pad:
        with pytest.raises(
            VerificationError, match=f"expected {len(full) - 1} bytes .* file has {len(full)}"
        ):
            run(SafetensorsVerifier(), with_length(n - 1))


def test_non_json_header(tmp_path: Path) -> None:
    path = write(tmp_path, "j.safetensors", raw_safetensors(b"{not json}", b""))
    with pytest.raises(VerificationError, match="not valid UTF-8 JSON"):
        run(SafetensorsVerifier(), path)
    path = write(tmp_path, "a.safetensors", raw_safetensors(b"[1, 2]  ", b""))
    with pytest.raises(VerificationError, match="JSON object"):
        run(SafetensorsVerifier(), path)


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    entry = '{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    path = write(tmp_path, "d.safetensors", raw_safetensors(f'{{"a": {entry}, "a": {entry}}}'.encode(), b"x"))
    with pytest.raises(VerificationError, match="duplicate key 'a'"):
        run(SafetensorsVerifier(), path)


def u8(begin: int, end: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {"dtype": "U8", "shape": [end - begin] if shape is None else shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": u8(0, 4), "b": u8(2, 6)}, b"x" * 6, "'b' at \\[2, 6\\] overlaps the previous tensor"),
        ({"a": u8(0, 4), "b": u8(0, 4)}, b"x" * 4, "overlaps"),
        ({"a": u8(0, 4), "b": u8(6, 8)}, b"x" * 8, "has a hole: bytes \\[4, 6\\]"),
        ({"a": u8(2, 4)}, b"x" * 4, "has a hole: bytes \\[0, 2\\]"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"x" * 4, "needs 8 bytes"),
        ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"x", "unknown dtype 'Q7'"),
        ({"a": u8(0, 1, shape=[-1])}, b"x", "shape must be a list of non-negative ints"),
        ({"a": u8(0, 1, shape=[True])}, b"x", "shape must be a list"),
        ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"x", "data_offsets must be"),
        ({"a": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, b"x", "before begin"),
        ({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"xx", "does not fill whole bytes"),
        ({"a": [1, 2]}, b"", "'a' is not an object"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map strings to strings"),
    ],
)
def test_bad_tensor_tables(tmp_path: Path, header: dict[str, Any], data: bytes, message: str) -> None:
    path = write(tmp_path, "bad.safetensors", raw_safetensors(header, data))
    with pytest.raises(VerificationError, match=message):
        run(SafetensorsVerifier(), path)


def test_sub_byte_dtype_passes(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}, "b": u8(3, 4)}
    run(SafetensorsVerifier(), write(tmp_path, "f4.safetensors", raw_safetensors(header, b"abcd")))


# --- choosing and running ------------------------------------------------------------------------------


def test_verifiers_for_by_extension() -> None:
    assert [v.name for v in verifiers_for("/m/model.pt")] == ["pytorch"]
    assert [v.name for v in verifiers_for("/m/MODEL.PTH")] == ["pytorch"]
    assert [v.name for v in verifiers_for("/m/model.safetensors")] == ["safetensors"]
    assert verifiers_for("/m/model.ckpt") == []
    assert verifiers_for("/m/data.csv") == []


def test_resolve_specs() -> None:
    assert resolve_verifiers(None) == []
    assert resolve_verifiers("none") == []
    assert resolve_verifiers("") == []
    assert [v.name for v in resolve_verifiers("auto")] == ["auto"]
    assert [v.name for v in resolve_verifiers(" zip , Safetensors ")] == ["zip", "safetensors"]
    assert [v.name for v in resolve_verifiers(["pytorch", "auto"])] == ["pytorch", "auto"]

    def my_check(path: str, size: int) -> None:
        pass

    mine = resolve_verifiers(["zip", my_check])
    assert [v.name for v in mine] == ["zip", "my_check"]
    preset = pytorch_verifier()
    assert resolve_verifiers(preset) == [preset]  # named verifier objects pass through unchanged


@pytest.mark.parametrize("spec", ["zpi", ["zip", "tar"], "zip,,nope"])
def test_resolve_rejects_unknown_names(spec: str | list[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown verifier '(zpi|tar|nope)'; known: auto, pytorch"):
        resolve_verifiers(spec)


def test_resolve_rejects_non_callables() -> None:
    with pytest.raises(ValueError, match="a name or a callable"):
        resolve_verifiers([42])  # type: ignore[list-item]


def test_auto_dispatches_by_extension(tmp_path: Path, good_st: Path) -> None:
    auto = AutoVerifier()
    run(auto, good_st)
    run(auto, torch_zip(tmp_path / "ok.pth"))
    run(auto, write(tmp_path, "notes.txt", b"anything"))
    with pytest.raises(VerificationError, match="expected a zip archive"):
        run(auto, write(tmp_path, "bad.pt", b"nope"))
    with pytest.raises(VerificationError, match="safetensors"):
        run(auto, write(tmp_path, "bad.safetensors", good_st.read_bytes()[:-1]))


def test_run_verifiers_in_order_and_stops_at_first_failure(tmp_path: Path) -> None:
    path = write(tmp_path, "f.bin", b"abc")
    seen: list[str] = []

    def first(p: str, size: int) -> None:
        seen.append("first")
        assert size == 3

    def failing(p: str, size: int) -> None:
        seen.append("failing")
        raise VerificationError(f"{p}: custom check failed")

    def never(p: str, size: int) -> None:
        seen.append("never")

    with pytest.raises(VerificationError, match="custom check failed"):
        run_verifiers(path, 3, resolve_verifiers([first, failing, never]))
    assert seen == ["first", "failing"]
    assert Path(path).exists()  # the caller deletes the partial, not the verifiers


def test_user_verifier_errors_become_verification_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "f.bin", b"abc")

    def picky(p: str, size: int) -> None:
        raise ValueError("no magic bytes")

    with pytest.raises(VerificationError, match="verifier 'picky' rejected the file: ValueError: no magic"):
        run_verifiers(path, 3, resolve_verifiers(picky))
