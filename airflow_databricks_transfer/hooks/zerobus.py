"""ZerobusHook: the standard ``databricks`` connection -> Zerobus streams through the official SDK.

Thin on purpose: the SDK (``databricks-zerobus-ingest-sdk``) does the streaming; ``clients/zerobus.py``
translates its errors; the engine's Ingester does batches, checkpoints and recovery. The SDK starts a tokio
runtime, so nothing here touches it until a stream opens, inside the task process.

Connection fields (the same ``databricks`` connection the Files hook uses, with OAuth M2M):
Host = workspace URL (its ``/oidc/v1/token`` mints the Zerobus tokens), Login = service principal client id,
Password = its OAuth secret, extra ``zerobus_endpoint`` = the Zerobus ingest endpoint
(``https://<workspace-id>.zerobus.<region>.cloud.databricks.com``). A ``headers_provider`` replaces OAuth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_databricks_transfer.clients.zerobus import (
    Descriptor,
    HeadersCallable,
    RecordType,
    StreamOptions,
    ZerobusClient,
    ZerobusRecordSink,
    proto_converter,
)
from airflow_databricks_transfer.connection import hook_field_behaviour
from airflow_databricks_transfer.engine.checkpoint import IngestCheckpoint, SourceIdentity
from airflow_databricks_transfer.engine.ingest import Ingester, IngestOptions, IngestResult, RecordReader
from airflow_databricks_transfer.engine.ports import IngestCheckpointSink, RecordSink
from airflow_databricks_transfer.engine.progress import Subscriber, log_progress
from airflow_databricks_transfer.hooks._running import CancellableTransfers

ENDPOINT_EXTRA = "zerobus_endpoint"


@dataclass(frozen=True)
class ZerobusConnection:
    """What a ``databricks`` connection says about Zerobus; ``repr`` hides the secret."""

    conn_id: str
    endpoint: str
    uc_url: str
    client_id: str | None
    client_secret: str | None = field(repr=False)


def zerobus_connection(
    conn_id: str,
    host: str | None,
    login: str | None,
    password: str | None,
    extra: dict[str, Any],
    *,
    endpoint: str | None = None,
    headers_provider: bool = False,
) -> ZerobusConnection:
    """Read a ``databricks`` connection for Zerobus (pure, so it is unit-tested).

    ``endpoint`` (an operator argument) wins over the extra. Without a headers provider, Zerobus needs OAuth
    M2M: a personal access token cannot mint the table-scoped tokens the service takes.
    """
    endpoint = endpoint or extra.get(ENDPOINT_EXTRA)
    if not endpoint:
        raise ValueError(
            f"the Databricks connection {conn_id!r} has no Zerobus endpoint: set its extra "
            f'"{ENDPOINT_EXTRA}" (https://<workspace-id>.zerobus.<region>.cloud.databricks.com)'
        )
    uc_url = extra.get("host") or host or ""
    if uc_url and "://" not in uc_url:
        uc_url = f"https://{uc_url}"
    if headers_provider:
        return ZerobusConnection(conn_id, endpoint, uc_url.rstrip("/"), None, None)
    if not uc_url:
        raise ValueError(
            f"the Databricks connection {conn_id!r} has no host: Zerobus OAuth gets its tokens from the "
            "workspace URL"
        )
    if not (login and password) or login == "token":
        raise ValueError(
            f"Zerobus authenticates with OAuth M2M: put the service principal's client ID in Login and its "
            f"OAuth secret in Password of connection {conn_id!r} (a personal access token does not work), "
            "or pass a headers_provider"
        )
    return ZerobusConnection(conn_id, endpoint, uc_url.rstrip("/"), login, password)


class ZerobusHook(CancellableTransfers, BaseHook):
    """Streams records into Unity Catalog tables through Databricks Zerobus.

    :param databricks_conn_id: the Airflow connection (type ``databricks``): Host = workspace URL, Login =
        OAuth client id, Password = OAuth secret, extra ``zerobus_endpoint``.
    :param zerobus_endpoint: the Zerobus ingest endpoint, instead of the connection's extra.
    :param headers_provider: a callable ``(table) -> headers`` (pairs or a mapping, with ``authorization``)
        called on every connection attempt, for auth other than OAuth M2M; the connection's Login and
        Password are then not used.
    :param stream_options: the SDK's stream options (its defaults when None).
    """

    conn_name_attr = "databricks_conn_id"
    default_conn_name = "databricks_default"
    conn_type = "databricks"
    hook_name = "Databricks Zerobus"

    def __init__(
        self,
        databricks_conn_id: str = default_conn_name,
        *,
        zerobus_endpoint: str | None = None,
        headers_provider: HeadersCallable | None = None,
        stream_options: StreamOptions | None = None,
    ) -> None:
        super().__init__()
        self.databricks_conn_id = databricks_conn_id
        self.zerobus_endpoint = zerobus_endpoint
        self.headers_provider = headers_provider
        self.stream_options = stream_options or StreamOptions()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The ``databricks`` form's field behaviour (this hook adds only the ``zerobus_endpoint`` extra)."""
        return hook_field_behaviour()

    @cached_property
    def connection_spec(self) -> ZerobusConnection:
        try:
            conn = self.get_connection(self.databricks_conn_id)
        except AirflowNotFoundException as err:
            raise AirflowNotFoundException(
                f"the databricks connection {self.databricks_conn_id!r} isn't defined: create it (type "
                f"databricks) in the UI or set AIRFLOW_CONN_{self.databricks_conn_id.upper()}"
            ) from err
        return zerobus_connection(
            self.databricks_conn_id,
            conn.host,
            conn.login,
            conn.password,
            conn.extra_dejson or {},
            endpoint=self.zerobus_endpoint,
            headers_provider=self.headers_provider is not None,
        )

    @cached_property
    def client(self) -> ZerobusClient:
        """Built in the task process on first use (the SDK's runtime starts with the first stream)."""
        spec = self.connection_spec
        client = ZerobusClient(
            spec.endpoint,
            spec.uc_url,
            client_id=spec.client_id,
            client_secret=spec.client_secret,
            headers_provider=self.headers_provider,
        )
        self.log.info("Zerobus: %s to %s", client.auth_mode, client.endpoint)
        return client

    def get_conn(self) -> ZerobusClient:
        return self.client

    def open_sink(
        self,
        table: str,
        record_type: RecordType = "json",
        descriptor: Descriptor = None,
        options: StreamOptions | None = None,
    ) -> ZerobusRecordSink:
        """A new stream to ``table`` (``catalog.schema.table``); the engine's errors on failure."""
        return self.client.open_sink(table, record_type, descriptor, options or self.stream_options)

    def ingest(
        self,
        reader: RecordReader,
        table: str,
        *,
        options: IngestOptions | None = None,
        record_type: RecordType = "json",
        descriptor: Descriptor = None,
        convert: Callable[[Any], Any] | None = None,
        stream_options: StreamOptions | None = None,
        checkpoint: IngestCheckpoint | None = None,
        sink: IngestCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
        source: SourceIdentity | None = None,
    ) -> IngestResult:
        """Every record of ``reader`` into ``table`` in acknowledged batches, resuming after ``checkpoint``.

        A broken stream is closed and a new one opened, the reader rewound to the last acknowledged position
        (the engine's retry policy and budget in ``options``); fatal errors (auth, missing table, schema) end
        it at once, the checkpoint kept. On a protobuf stream without ``convert``, dict records are encoded
        with ``descriptor``. Progress lines go to the task log; ``cancel()`` (from ``on_kill``) stops it.
        """
        if record_type == "proto" and convert is None:
            if descriptor is None:
                raise ValueError("record_type='proto' needs a descriptor")
            convert = proto_converter(descriptor)
        stream_opts = stream_options or self.stream_options

        def open_sink() -> RecordSink:
            return self.open_sink(table, record_type, descriptor, stream_opts)

        ingester = Ingester(
            open_sink,
            reader,
            options,
            table=table,
            sink=sink,
            subscribers=[log_progress(self._progress_logger()), *(subscribers or [])],
            source=source,
            convert=convert,
        )
        with self._running(ingester):
            return ingester.run(checkpoint)
