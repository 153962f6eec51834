"""Unit tests of the emulator's building blocks: URL signing, volume paths, settings, error bodies."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from airflow_databricks_transfer.testing.files_api.errors import ApiError, PresignedError
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings
from airflow_databricks_transfer.testing.files_api.signing import UrlSigner, is_expired
from airflow_databricks_transfer.testing.files_api.state import parse_volume_path

KEY = b"k" * 32
BASE = "http://127.0.0.1:1234"


def sdk_sees_expired(status: int, body: str) -> bool:
    """databricks-sdk's rule for "this presigned URL expired" (files_api.md section 7.3)."""
    if status not in (400, 403):
        return False
    root = ET.fromstring(body)
    if root.tag != "Error":
        return False
    code = root.findtext("Code")
    if code == "ExpiredToken":
        return True
    if code == "AuthenticationFailed":
        return "Signature not valid in the specified time frame" in (
            root.findtext("AuthenticationErrorDetail") or ""
        )
    if code == "AccessDenied":
        return root.findtext("Message") == "Request has expired"
    return False


def split_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


# ---------------------------------------------------------------- UrlSigner


def test_signed_url_verifies_and_returns_its_fields() -> None:
    signer = UrlSigner(KEY)
    url = signer.url(BASE + "/", "part", {"t": "tok", "n": "7"}, int(time.time()) + 60)
    path, query = split_url(url)
    assert url.startswith(BASE + "/_presigned/part?")
    assert path == "/_presigned/part"
    assert signer.verify("part", query, "AWS") == {"t": "tok", "n": "7"}


def test_url_from_another_key_does_not_verify() -> None:
    url = UrlSigner(b"other" * 8).url(BASE, "part", {"t": "tok", "n": "1"}, int(time.time()) + 60)
    with pytest.raises(PresignedError) as err:
        UrlSigner(KEY).verify("part", split_url(url)[1], "AWS")
    assert err.value.status == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in err.value.xml


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: {**q, "n": "8"},  # another part number
        lambda q: {**q, "t": "someone-elses-session"},
        lambda q: {**q, "X-Emu-Expires": str(int(q["X-Emu-Expires"]) + 3600)},  # extend the lifetime
        lambda q: {**q, "X-Emu-Signature": "0" * 64},
        lambda q: {**q, "extra": "1"},
        lambda q: {k: v for k, v in q.items() if k != "X-Emu-Signature"},
        lambda q: {k: v for k, v in q.items() if k != "X-Emu-Expires"},
        lambda q: {**q, "X-Emu-Expires": "soon"},
    ],
)
def test_tampered_url_is_signature_does_not_match(tamper: Any) -> None:
    signer = UrlSigner(KEY)
    url = signer.url(BASE, "part", {"t": "tok", "n": "7"}, int(time.time()) + 60)
    with pytest.raises(PresignedError) as err:
        signer.verify("part", tamper(split_url(url)[1]), "AWS")
    assert err.value.status == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in err.value.xml
    assert not is_expired(err.value)
    assert not sdk_sees_expired(err.value.status, err.value.xml)


def test_url_for_one_operation_is_refused_for_another() -> None:
    signer = UrlSigner(KEY)
    url = signer.url(BASE, "abort", {"t": "tok"}, int(time.time()) + 60)
    with pytest.raises(PresignedError, match="SignatureDoesNotMatch"):
        signer.verify("resumable", split_url(url)[1], "AWS")


def test_round_trip_through_urlencode_keeps_the_signature_valid() -> None:
    signer = UrlSigner(KEY)
    path = "/Volumes/main/default/landing/dir a/f#1?.txt"
    url = signer.url(BASE, "download", {"p": path}, int(time.time()) + 60)
    _, query = split_url(url)
    rebuilt = dict(parse_qsl(urlencode(query)))
    assert signer.verify("download", rebuilt, "AWS") == {"p": path}


@pytest.mark.parametrize(
    ("cloud", "code"),
    [("AWS", "AccessDenied"), ("AZURE", "AuthenticationFailed"), ("GCP", "ExpiredToken")],
)
def test_expired_url_gives_the_cloud_expired_body(cloud: str, code: str) -> None:
    signer = UrlSigner(KEY)
    expires = int(time.time()) + 60
    url = signer.url(BASE, "part", {"t": "tok", "n": "1"}, expires)
    query = split_url(url)[1]
    assert signer.verify("part", query, cloud, now=expires - 1) == {"t": "tok", "n": "1"}
    with pytest.raises(PresignedError) as err:
        signer.verify("part", query, cloud, now=expires)
    assert err.value.status == 403
    assert f"<Code>{code}</Code>" in err.value.xml
    assert is_expired(err.value)
    assert sdk_sees_expired(err.value.status, err.value.xml)


def test_expired_bodies_match_the_reference_exactly() -> None:
    signer = UrlSigner(KEY)
    query = split_url(signer.url(BASE, "part", {"t": "x", "n": "1"}, 1000))[1]
    bodies = {}
    for cloud in ("AWS", "AZURE", "GCP"):
        with pytest.raises(PresignedError) as err:
            signer.verify("part", query, cloud)
        bodies[cloud] = ET.fromstring(err.value.xml)
    assert bodies["AWS"].findtext("Message") == "Request has expired"
    assert "Signature not valid in the specified time frame" in (
        bodies["AZURE"].findtext("AuthenticationErrorDetail") or ""
    )
    assert bodies["GCP"].findtext("Code") == "ExpiredToken"


def test_tampering_is_reported_before_expiry() -> None:
    """A forged URL must not learn anything from the expiry check."""
    signer = UrlSigner(KEY)
    query = split_url(signer.url(BASE, "part", {"t": "x", "n": "1"}, 1000))[1]
    query["n"] = "2"
    with pytest.raises(PresignedError, match="SignatureDoesNotMatch"):
        signer.verify("part", query, "AWS")


# ---------------------------------------------------------------- parse_volume_path


def test_parse_volume_path_components() -> None:
    vp = parse_volume_path("/Volumes/main/default/landing/dir/file.bin")
    assert vp.components == ("Volumes", "main", "default", "landing", "dir", "file.bin")
    assert vp.volume_full_name == "main.default.landing"
    assert vp.normalized == "/Volumes/main/default/landing/dir/file.bin"
    assert not vp.is_volume_root


def test_parse_volume_path_accepts_trailing_slash_and_volume_root() -> None:
    assert (
        parse_volume_path("/Volumes/main/default/landing/dir/").normalized
        == "/Volumes/main/default/landing/dir"
    )
    root = parse_volume_path("/Volumes/main/default/landing")
    assert root.is_volume_root
    assert root.volume_full_name == "main.default.landing"


def test_parse_volume_path_keeps_special_characters() -> None:
    vp = parse_volume_path("/Volumes/main/default/landing/dir a/f#1?.txt")
    assert vp.components[-2:] == ("dir a", "f#1?.txt")


@pytest.mark.parametrize(
    "path",
    [
        "Volumes/main/default/landing/f",  # relative
        "main/default/landing/f",
        "",
        "/Volumes/main/default/landing/../../other/vol/f",
        "/Volumes/main/default/landing/a/../f",
        "/Volumes/main/default/landing/./f",
        "/Volumes/main/default/landing//f",
        "/tmp/file",  # outside /Volumes
        "/volumes/main/default/landing/f",  # case-sensitive
        "/Workspace/Users/x/f",
        "/Volumes/main/default",  # too short: no volume
        "/Volumes/main",
        "/Volumes",
        "/",
        "/Volumes/main/default/landing/f\x00.txt",
    ],
)
def test_parse_volume_path_rejects(path: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_volume_path(path)
    assert err.value.status == 400
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


# ---------------------------------------------------------------- EmulatorSettings


def test_settings_updated_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        EmulatorSettings().updated({"min_part_size": 1})


def test_settings_updated_returns_a_new_object_and_coerces_collections() -> None:
    base = EmulatorSettings()
    new = base.updated(
        {
            "tokens": ["a", "b"],
            "read_only_tokens": ["r"],
            "default_catalogs": ["main", "other"],
            "cloud": "GCP",
        }
    )
    assert new is not base
    assert base.cloud == "AWS"
    assert new.tokens == frozenset({"a", "b"})
    assert new.read_only_tokens == frozenset({"r"})
    assert new.default_catalogs == ("main", "other")
    assert new.cloud == "GCP"
    hash(new)  # still a usable frozen value


@pytest.mark.parametrize(
    "changes",
    [
        {"tokens": []},
        {"upload_protocol": "tus"},
        {"cloud": "IBM"},
        {"min_part_size_bytes": -1},
        {"min_part_size_bytes": 10, "max_part_size_bytes": 5},
        {"max_parts": 0},
        {"session_ttl_s": 0},
        {"max_url_ttl_s": -1},
    ],
)
def test_settings_updated_validates_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EmulatorSettings().updated(changes)


def test_settings_public_hides_tokens() -> None:
    public = EmulatorSettings(tokens=frozenset({"secret-1", "secret-2"})).public()
    assert public["tokens"] == 2
    assert "secret-1" not in repr(public)


# ---------------------------------------------------------------- error bodies


def test_api_error_body_has_error_info_with_reason() -> None:
    body = ApiError(400, "BAD_REQUEST", "not empty", reason="FILES_API_DIRECTORY_IS_NOT_EMPTY").body()
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"] == "not empty"
    info = [d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert info == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "FILES_API_DIRECTORY_IS_NOT_EMPTY",
            "domain": "filesystem.databricks.com",
            "metadata": {},
        }
    ]


def test_api_error_body_without_reason_has_no_error_info() -> None:
    body = ApiError(404, "NOT_FOUND", "missing").body()
    assert [d["@type"] for d in body["details"]] == ["type.googleapis.com/google.rpc.RequestInfo"]
