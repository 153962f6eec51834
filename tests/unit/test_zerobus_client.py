"""Pure pieces of the Zerobus client and hook: the SDK error translation, stream options, protobuf helpers,
the connection's fields.

The SDK's exceptions carry no code, only the Rust core's message; the texts below are what 1.10 says
(verified against the emulator in tests/integration/test_zerobus_hook.py, which exercises the same paths
over a real stream).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from zerobus import NonRetriableException, StreamConfigurationOptions, ZerobusException

from airflow_databricks_transfer.clients.zerobus import (
    StreamOptions,
    ZerobusClient,
    message_class,
    proto_converter,
    translate,
)
from airflow_databricks_transfer.engine.errors import (
    AuthError,
    ConnectionLostError,
    InvalidRequestError,
    RemoteNotFoundError,
    RetryableError,
)
from airflow_databricks_transfer.hooks.zerobus import zerobus_connection

SDK_MESSAGES: list[tuple[BaseException, type[Exception]]] = [
    (
        NonRetriableException(
            'Specified UC token is in invalid format: Client error (401): {"error": "invalid_client"}.'
        ),
        AuthError,
    ),
    (
        NonRetriableException(
            "Failed to create stream: code: 'The request does not have valid authentication credentials', "
            'message: "invalid access token".'
        ),
        AuthError,
    ),
    (
        NonRetriableException(
            "Failed to create stream: code: 'The caller does not have permission to execute the specified "
            "operation', message: \"token is not authorized for table 'a.b.c'\"."
        ),
        AuthError,
    ),
    (
        NonRetriableException(
            "Failed to create stream: code: 'Some requested entity was not found', message: \"Table "
            "'main.default.nope' does not exist or is not accessible.\"."
        ),
        RemoteNotFoundError,
    ),
    (
        NonRetriableException(
            "Invalid argument: Record does not match the schema of table 'main.default.t': field 'colour' "
            "is not a column of the table."
        ),
        InvalidRequestError,
    ),
    (NonRetriableException("Specified UC table name is invalid: found 2 parts."), InvalidRequestError),
    (
        ZerobusException("Stream is closed: code: 'Deadline expired', message: \"Server ack timeout\""),
        ConnectionLostError,
    ),
    (ZerobusException("Token fetch failed: Network error: error sending request"), ConnectionLostError),
    (TypeError("Object of type object is not JSON serializable"), InvalidRequestError),
]


@pytest.mark.parametrize(("error", "expected"), SDK_MESSAGES)
def test_sdk_errors_translate_by_cause(error: BaseException, expected: type[Exception]) -> None:
    translated = translate(error, "open a stream to a.b.c")
    assert type(translated) is expected
    assert str(translated).startswith("open a stream to a.b.c: ")
    assert str(error) in str(translated) or isinstance(error, TypeError)
    # the retry decision is the class's: only the SDK's retryable class may come out retryable
    assert isinstance(translated, RetryableError) == (
        not isinstance(error, (NonRetriableException, TypeError))
    )


def test_translation_hides_bearer_tokens_and_known_secrets() -> None:
    err = ZerobusException("refused: authorization: Bearer eyJhbGciOi.xyz for client s3cr3t-value")
    text = str(translate(err, "open", secrets=["s3cr3t-value"]))
    assert "eyJhbGciOi" not in text and "s3cr3t-value" not in text
    assert "Bearer ***" in text


def test_a_non_sdk_error_is_not_translated() -> None:
    with pytest.raises(TypeError, match="not an SDK error"):
        translate(RuntimeError("a bug"), "send")


def test_stream_options_mirror_the_sdk_defaults() -> None:
    sdk = StreamConfigurationOptions()
    ours = StreamOptions()
    for name in StreamOptions.__dataclass_fields__:
        assert getattr(ours, name) == getattr(sdk, name), name
    converted = StreamOptions(flush_timeout_ms=1234, recovery=False).to_sdk("json")
    assert (converted.flush_timeout_ms, converted.recovery, converted.record_type.value) == (1234, False, 2)
    assert StreamOptions().to_sdk("proto").record_type.value == 1


def test_stream_options_from_templated_strings_and_refusals() -> None:
    opts = StreamOptions.from_dict({"max_inflight_records": "50", "recovery": "false", "flush_timeout_ms": 9})
    assert (opts.max_inflight_records, opts.recovery, opts.flush_timeout_ms) == (50, False, 9)
    with pytest.raises(ValueError, match="unknown Zerobus stream options"):
        StreamOptions.from_dict({"max_inflight": 5})
    with pytest.raises(ValueError, match="max_inflight_records must be >= 1"):
        StreamOptions(max_inflight_records=0)
    with pytest.raises(ValueError, match="recovery_retries must be >= 0"):
        StreamOptions(recovery_retries=-1)
    with pytest.raises(ValueError, match="must be an integer"):
        StreamOptions(flush_timeout_ms=1.5)  # type: ignore[arg-type]


def _file(package: str = "demo") -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="row.proto", package=package, syntax="proto2")
    fd = descriptor_pb2.FieldDescriptorProto
    row = file.message_type.add(name="Row")
    row.field.add(name="id", number=1, type=fd.TYPE_INT64, label=fd.LABEL_REQUIRED)
    row.field.add(name="body", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    file.message_type.add(name="Other").field.add(name="x", number=1, type=fd.TYPE_STRING)
    return file


def test_message_class_picks_the_first_message_as_the_sdk_does() -> None:
    cls = message_class(_file().SerializeToString())
    assert cls.DESCRIPTOR.full_name == "demo.Row"
    assert message_class(cls) is cls
    assert message_class(cls.DESCRIPTOR).DESCRIPTOR.full_name == "demo.Row"
    with pytest.raises(ValueError, match="generated message class"):
        message_class("demo.Row")


def test_proto_converter_encodes_rows_and_names_bad_fields() -> None:
    convert = proto_converter(_file("conv").SerializeToString())
    cls = message_class(_file("conv").SerializeToString())
    assert cls.FromString(convert({"id": 7, "body": "x"})) == cls(id=7, body="x")
    bad: list[dict[str, Any]] = [{"id": "seven"}, {"body": "no id"}, {"id": 1, "colour": "red"}]
    for record in bad:
        with pytest.raises(InvalidRequestError, match=r"record does not fit conv\.Row"):
            convert(record)


def test_client_needs_credentials_and_hides_them() -> None:
    with pytest.raises(ValueError, match="client id and secret, or a headers provider"):
        ZerobusClient("http://127.0.0.1:1", "http://127.0.0.1:2", client_id="id")
    client = ZerobusClient("http://127.0.0.1:1/", "", client_id="id", client_secret="very-secret")
    assert "very-secret" not in repr(client) and "very-secret" not in repr(vars(client))
    assert client.endpoint == "http://127.0.0.1:1" and client.auth_mode == "OAuth M2M"
    with pytest.raises(ValueError, match="descriptor is required"):
        client.open_sink("a.b.c", "proto")


def test_the_databricks_connection_read_for_zerobus() -> None:
    extra = {"zerobus_endpoint": "https://123.zerobus.us-west-2.cloud.databricks.com"}
    spec = zerobus_connection("dbx", "adb-1.azuredatabricks.net/", "client-id", "oauth-secret", extra)
    assert (spec.endpoint, spec.uc_url, spec.client_id) == (
        extra["zerobus_endpoint"],
        "https://adb-1.azuredatabricks.net",
        "client-id",
    )
    assert "oauth-secret" not in repr(spec)
    # the operator's endpoint wins; the official hook's legacy extra "host" overrides Host
    spec = zerobus_connection("dbx", "h", "id", "s", {"host": "https://w"}, endpoint="http://127.0.0.1:9")
    assert (spec.endpoint, spec.uc_url) == ("http://127.0.0.1:9", "https://w")
    with pytest.raises(ValueError, match='no Zerobus endpoint: set its extra "zerobus_endpoint"'):
        zerobus_connection("dbx", "h", "id", "s", {})
    for login, password in ((None, "dapi-token"), ("token", "dapi-token"), ("id", None)):
        with pytest.raises(ValueError, match="OAuth M2M"):
            zerobus_connection("dbx", "h", login, password, extra)
    with pytest.raises(ValueError, match="no host"):
        zerobus_connection("dbx", None, "id", "s", extra)
    # a headers provider needs neither credentials nor a workspace URL
    spec = zerobus_connection("dbx", None, None, None, extra, headers_provider=True)
    assert (spec.client_id, spec.client_secret, spec.uc_url) == (None, None, "")
