"""Zerobus ingest through the official ``databricks-zerobus-ingest-sdk``, as the engine's ``RecordSink``.

The SDK (a Rust core) does the wire work, OAuth, reconnects and in-stream resends; this module adds only
what the engine needs around it: one translation of the SDK's two exception classes into the engine's
error tree, stream options as a typed dataclass with the SDK's defaults, and protobuf helpers.

The SDK starts a tokio runtime per ``ZerobusSdk``, so it is imported and built on first use, inside the
task process: never at DAG parse time, never before a fork.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from airflow_databricks_transfer.engine.errors import (
    AuthError,
    ConnectionLostError,
    FatalError,
    InvalidRequestError,
    RemoteNotFoundError,
    TransferError,
)

RecordType = Literal["json", "proto"]

TABLE_HEADER = "x-databricks-zerobus-table-name"

# Headers for one connection attempt of a stream to ``table``: called on every (re)connect, so a provider
# may hand out a fresh token each time. Must include ``authorization``; the table header is added if absent.
HeadersCallable = Callable[[str], Mapping[str, str] | Iterable[tuple[str, str]]]

# A protobuf row schema as the SDK takes it: a generated message class, its ``Descriptor``, or the bytes of
# a serialized ``FileDescriptorProto`` (whose first message is the row).
Descriptor = Any


@dataclass(frozen=True)
class StreamOptions:
    """The SDK's ``StreamConfigurationOptions``, with its defaults (databricks-zerobus-ingest-sdk 1.10).

    ``max_inflight_records`` counts submissions, not records: one ``send`` of a batch is one. The SDK's
    recovery re-sends unacknowledged batches on a new server stream; ``recovery_retries`` bounds
    consecutive failed reconnects only (a successful one resets it), so ``flush_timeout_ms`` is what
    bounds a stream that keeps reconnecting.
    """

    max_inflight_records: int = 1_000_000
    recovery: bool = True
    recovery_timeout_ms: int = 15_000
    recovery_backoff_ms: int = 2_000
    recovery_retries: int = 4
    server_lack_of_ack_timeout_ms: int = 60_000
    flush_timeout_ms: int = 300_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "recovery":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"StreamOptions.{name} must be an integer, not {value!r}")
            if value < (1 if name == "max_inflight_records" else 0):
                raise ValueError(
                    f"StreamOptions.{name} must be >= {1 if name == 'max_inflight_records' else 0}"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamOptions:
        """From operator arguments (templated numbers arrive as strings); unknown keys are refused."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Zerobus stream options: {sorted(unknown)} (known: {sorted(known)})")
        coerced: dict[str, Any] = {}
        for key, value in data.items():
            if key == "recovery":
                coerced[key] = value if isinstance(value, bool) else str(value).strip().lower() in _TRUE
            else:
                coerced[key] = int(value)
        return cls(**coerced)

    def to_sdk(self, record_type: RecordType | None = None) -> Any:
        """The SDK's options object; ``record_type`` set makes the SDK check it against the descriptor."""
        import zerobus  # noqa: PLC0415 - the SDK loads (and starts its runtime) only when a stream opens

        kwargs: dict[str, Any] = asdict(self)
        if record_type is not None:
            kwargs["record_type"] = (
                zerobus.RecordType.PROTO if record_type == "proto" else zerobus.RecordType.JSON
            )
        return zerobus.StreamConfigurationOptions(**kwargs)


_TRUE = ("true", "1", "yes", "on")
_DESCRIPTOR_KINDS = (
    "the protobuf descriptor must be a generated message class, its DESCRIPTOR, or FileDescriptorProto bytes"
)

# What the SDK's NonRetriableException says, by cause (the SDK has no finer classes; the texts are the Rust
# core's ZerobusError displays and tonic's gRPC code descriptions).
_AUTH = (
    "Specified UC token is in invalid format",  # the OAuth token endpoint answered 4xx
    "does not have valid authentication credentials",  # UNAUTHENTICATED
    "does not have permission to execute",  # PERMISSION_DENIED
)
_NOT_FOUND = ("Some requested entity was not found",)  # NOT_FOUND: the table does not exist
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


def translate(err: BaseException, action: str, *, secrets: Sequence[str] = ()) -> TransferError:
    """The engine error for an SDK exception (the one place SDK classes and messages are read).

    NonRetriableException -> FatalError subclasses (the server's message kept: it names the field of a
    schema mismatch); ZerobusException -> ConnectionLostError (retryable); TypeError/ValueError from
    encoding a record -> InvalidRequestError. Messages lose bearer tokens and the given ``secrets``.
    """
    import zerobus  # noqa: PLC0415

    message = f"{action}: {_scrub(str(err) or type(err).__name__, secrets)}"
    if isinstance(err, zerobus.NonRetriableException):
        text = str(err)
        if any(marker in text for marker in _AUTH):
            return AuthError(message)
        if any(marker in text for marker in _NOT_FOUND):
            return RemoteNotFoundError(message)
        return InvalidRequestError(message)
    if isinstance(err, zerobus.ZerobusException):
        return ConnectionLostError(message)
    if isinstance(err, (TypeError, ValueError)):
        return InvalidRequestError(f"{message} (a record the stream's record type cannot carry)")
    raise TypeError(f"not an SDK error: {type(err).__name__}") from err


def sdk_errors() -> tuple[type[BaseException], ...]:
    """What ``translate`` handles: the SDK's exceptions, and TypeError/ValueError from encoding a record.
    Anything else (a bug) propagates as itself rather than being retried."""
    import zerobus  # noqa: PLC0415

    return (zerobus.ZerobusException, TypeError, ValueError)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


class ZerobusRecordSink:
    """The engine's ``RecordSink`` over one SDK ``ZerobusStream``.

    After a non-retryable failure the SDK answers later calls with a retryable "Stream is closed"; the sink
    remembers the fatal error and raises it again instead, so a schema mismatch is never retried.
    """

    def __init__(self, stream: Any, *, table: str = "", secrets: Sequence[str] = ()) -> None:
        self._stream = stream
        self.table = table
        self._secrets = tuple(secrets)
        self._failed: FatalError | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.batches_sent = 0
        self.records_sent = 0

    def __repr__(self) -> str:
        return f"ZerobusRecordSink(table={self.table!r}, records_sent={self.records_sent})"

    def send(self, records: Sequence[Any]) -> None:
        """Queue one batch (dicts or JSON strings on a JSON stream, bytes or messages on a proto stream).

        One SDK submission per call; blocks while ``max_inflight_records`` submissions are unacknowledged.
        """
        if not records:
            return
        self._check_usable("send")
        try:
            self._stream.ingest_records_offset(records if isinstance(records, list) else list(records))
        except sdk_errors() as err:
            raise self._fail(err, f"send {len(records)} records to {self.table}") from err
        self.batches_sent += 1
        self.records_sent += len(records)

    def flush(self) -> None:
        """Return once the server has durably acknowledged every record sent on this stream."""
        self._check_usable("flush")
        try:
            self._stream.flush()
        except sdk_errors() as err:
            raise self._fail(err, f"flush {self.table}") from err

    def close(self) -> None:
        """Flush and close the stream (idempotent). After a failure, only release it: nothing to wait for."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._stream.close()
        except sdk_errors() as err:
            if self._failed is None:
                raise self._fail(err, f"close the stream to {self.table}") from err

    def _check_usable(self, what: str) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise InvalidRequestError(f"{what}: the stream to {self.table} is closed")

    def _fail(self, err: BaseException, action: str) -> TransferError:
        translated = translate(err, action, secrets=self._secrets)
        if isinstance(translated, FatalError):
            self._failed = translated
        return translated


@dataclass(frozen=True)
class _Auth:
    client_id: str | None
    client_secret: str | None = field(repr=False)
    headers: HeadersCallable | None = field(repr=False)


class ZerobusClient:
    """Opens Zerobus streams: OAuth M2M (client id and secret, tokens from ``uc_url``/oidc/v1/token, minted
    and refreshed by the SDK) or a ``headers_provider`` for any other auth.

    :param endpoint: the Zerobus ingest endpoint (``https://<workspace-id>.zerobus.<region>.cloud.databricks.com``;
        ``http://`` selects plaintext, e.g. an emulator).
    :param uc_url: the workspace URL, where the OAuth token endpoint is (unused with a headers provider).
    :param sdk: an existing ``ZerobusSdk`` to share (one tokio runtime each); built on first use otherwise.
    """

    def __init__(
        self,
        endpoint: str,
        uc_url: str = "",
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        headers_provider: HeadersCallable | None = None,
        application_name: str = "airflow-databricks-transfer",
        sdk: Any = None,
    ) -> None:
        if headers_provider is None and not (client_id and client_secret):
            raise ValueError("Zerobus needs an OAuth client id and secret, or a headers provider")
        if not endpoint:
            raise ValueError("Zerobus needs its ingest endpoint (https://<workspace-id>.zerobus.<region>...)")
        self.endpoint = endpoint.rstrip("/")
        self.uc_url = uc_url.rstrip("/")
        self.application_name = application_name
        self._auth = _Auth(client_id, client_secret, headers_provider)
        self._sdk = sdk
        self._sdk_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZerobusClient(endpoint={self.endpoint!r}, auth={self.auth_mode!r})"

    @property
    def auth_mode(self) -> str:
        return "headers provider" if self._auth.headers is not None else "OAuth M2M"

    @property
    def sdk(self) -> Any:
        """The ``ZerobusSdk`` (its tokio runtime starts here, in the process that streams)."""
        with self._sdk_lock:
            if self._sdk is None:
                import zerobus  # noqa: PLC0415

                self._sdk = zerobus.ZerobusSdk(
                    self.endpoint, self.uc_url, application_name=self.application_name
                )
            return self._sdk

    def open_sink(
        self,
        table: str,
        record_type: RecordType = "json",
        descriptor: Descriptor = None,
        options: StreamOptions | None = None,
    ) -> ZerobusRecordSink:
        """A new stream to ``table`` (``catalog.schema.table``) as a RecordSink; engine errors on failure.

        ``record_type="proto"`` needs ``descriptor`` (a generated class, a Descriptor, or serialized
        FileDescriptorProto bytes); records are then protobuf bytes or messages.
        """
        import zerobus  # noqa: PLC0415

        if record_type not in ("json", "proto"):
            raise ValueError(f"record_type must be 'json' or 'proto', not {record_type!r}")
        if (record_type == "proto") != (descriptor is not None):
            raise ValueError("a protobuf descriptor is required with record_type='proto', and only then")
        if record_type == "proto":
            props = zerobus.TableProperties(table, descriptor_proto=_sdk_descriptor(descriptor))
        else:
            props = zerobus.TableProperties(table)
        sdk_options = (options or StreamOptions()).to_sdk(record_type)
        secrets = tuple(s for s in (self._auth.client_secret,) if s)
        try:
            if self._auth.headers is not None:
                stream = self.sdk.create_stream(
                    headers_provider=_headers_provider(self._auth.headers, table),
                    table_properties=props,
                    options=sdk_options,
                )
            else:
                stream = self.sdk.create_stream(
                    client_id=self._auth.client_id,
                    client_secret=self._auth.client_secret,
                    table_properties=props,
                    options=sdk_options,
                )
        except sdk_errors() as err:
            raise translate(err, f"open a Zerobus stream to {table}", secrets=secrets) from err
        return ZerobusRecordSink(stream, table=table, secrets=secrets)


def _headers_provider(provide: HeadersCallable, table: str) -> Any:
    """An SDK ``HeadersProvider`` over a callable, adding the table header the OAuth path would send."""
    import zerobus  # noqa: PLC0415

    class _Provider(zerobus.HeadersProvider):  # type: ignore[misc]
        def get_headers(self) -> list[tuple[str, str]]:
            raw = provide(table)
            pairs = list(raw.items()) if isinstance(raw, Mapping) else [(str(k), str(v)) for k, v in raw]
            if not any(k.lower() == TABLE_HEADER for k, _ in pairs):
                pairs.append((TABLE_HEADER, table))
            return pairs

    return _Provider()


def _sdk_descriptor(descriptor: Descriptor) -> Any:
    """What ``TableProperties`` takes: a generated class becomes its Descriptor; bytes, Descriptors pass."""
    inner = getattr(descriptor, "DESCRIPTOR", None)
    if isinstance(descriptor, type) and inner is not None:
        return inner
    if isinstance(descriptor, (bytes, bytearray)):
        return bytes(descriptor)
    if hasattr(descriptor, "full_name") and hasattr(descriptor, "fields"):
        return descriptor
    raise ValueError(_DESCRIPTOR_KINDS)


def message_class(descriptor: Descriptor) -> Any:
    """The protobuf message class for a descriptor, as the SDK picks it (FileDescriptorProto bytes: the first
    message in the file)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: PLC0415

    if isinstance(descriptor, type) and hasattr(descriptor, "DESCRIPTOR"):
        return descriptor
    if isinstance(descriptor, (bytes, bytearray)):
        file = descriptor_pb2.FileDescriptorProto.FromString(bytes(descriptor))
        if not file.message_type:
            raise ValueError(f"the FileDescriptorProto {file.name!r} defines no message")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        name = f"{file.package}.{file.message_type[0].name}" if file.package else file.message_type[0].name
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    if hasattr(descriptor, "full_name") and hasattr(descriptor, "fields"):
        return message_factory.GetMessageClass(descriptor)
    raise ValueError(_DESCRIPTOR_KINDS)


def proto_converter(descriptor: Descriptor) -> Callable[[dict[str, Any]], bytes]:
    """A record converter for the Ingester: a JSON-like dict -> serialized protobuf bytes of the row message.

    Field names are the table's column names; an unknown field or a wrong type raises ``InvalidRequestError``
    naming it (bad input, not a transient fault).
    """
    from google.protobuf import json_format  # noqa: PLC0415
    from google.protobuf.message import EncodeError  # noqa: PLC0415

    cls = message_class(descriptor)

    def convert(record: dict[str, Any]) -> bytes:
        try:
            return bytes(json_format.ParseDict(record, cls()).SerializeToString())
        except (json_format.ParseError, EncodeError, TypeError, ValueError) as err:
            raise InvalidRequestError(f"record does not fit {cls.DESCRIPTOR.full_name}: {err}") from err

    return convert
