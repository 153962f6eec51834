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

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_databricks_transfer.clients.zerobus import HeadersCallable, StreamOptions, ZerobusClient
from airflow_databricks_transfer.connection import hook_field_behaviour
from airflow_databricks_transfer.hooks._zerobus_ingest import (
    ENDPOINT_EXTRA,
    ZerobusConnection,
    ZerobusIngests,
    zerobus_connection,
)

__all__ = ["ENDPOINT_EXTRA", "ZerobusConnection", "ZerobusHook", "zerobus_connection"]


class ZerobusHook(ZerobusIngests, BaseHook):
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
