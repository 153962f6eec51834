"""AzureBlobTransferHook: an Airflow ``wasb`` connection -> a configured azure-storage-blob client.

Thin on purpose: the auth rules live in ``airflow_databricks_transfer.azure_connection`` (the official
Azure provider's field meanings and order, without needing that provider); this class reads the
connection and caches the client. With the official provider installed, its ``wasb`` form and Test
button serve the connection, and this hook reads the same fields.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_databricks_transfer.azure_connection import (
    ClientSpec,
    build_client,
    client_spec,
    hook_field_behaviour,
)
from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient
from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.ports import UploadCheckpointSink
from airflow_databricks_transfer.engine.progress import Subscriber
from airflow_databricks_transfer.engine.upload import UploadOptions, UploadResult
from airflow_databricks_transfer.hooks._azure_transfers import AzureBlobTransfers
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient


def _quiet_azure_http_log() -> None:
    """As WasbHook: the SDK's per-request INFO lines stay off unless AZURE_HTTP_LOGGING_LEVEL asks."""
    logger = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    try:
        logger.setLevel(os.environ.get("AZURE_HTTP_LOGGING_LEVEL", logging.WARNING))
    except ValueError:
        logger.setLevel(logging.WARNING)


class AzureBlobTransferHook(AzureBlobTransfers, BaseHook):
    """Azure Blob Storage transfers over a ``wasb`` connection.

    :param wasb_conn_id: the Airflow connection (type ``wasb``).
    :param public_read: anonymous access to a public container (when the connection has neither a
        connection string nor a service principal, as in WasbHook).
    """

    conn_name_attr = "wasb_conn_id"
    default_conn_name = "wasb_default"
    conn_type = "wasb"
    hook_name = "Azure Blob Storage"

    def __init__(self, wasb_conn_id: str = default_conn_name, public_read: bool = False) -> None:
        super().__init__()
        self.wasb_conn_id = wasb_conn_id
        self.public_read = public_read
        _quiet_azure_http_log()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's field behaviour, from the definitions the provider info declares too."""
        return hook_field_behaviour()

    @cached_property
    def client_spec(self) -> ClientSpec:
        """The auth mode and client options the connection selects (its repr hides every secret)."""
        try:
            conn = self.get_connection(self.wasb_conn_id)
        except AirflowNotFoundException as err:
            raise AirflowNotFoundException(
                f"the wasb connection {self.wasb_conn_id!r} isn't defined: create it (type wasb) in the UI "
                f"or set AIRFLOW_CONN_{self.wasb_conn_id.upper()}"
            ) from err
        spec = client_spec(
            self.wasb_conn_id,
            conn.host,
            conn.login,
            conn.password,
            conn.extra_dejson or {},
            public_read=self.public_read,
        )
        if spec.ignored_extras:
            self.log.warning(
                "Connection %s: extras not passed to the Azure client (not client options, or options "
                "this package sets itself, such as retries): %s",
                self.wasb_conn_id,
                ", ".join(spec.ignored_extras),
            )
        return spec

    @cached_property
    def blob_service_client(self) -> BlobServiceClient:
        spec = self.client_spec
        client = build_client(spec)
        where = spec.endpoint if spec.mode != "connection_string" else _public_url(client.url)
        self.log.info("Azure Blob: %s auth to %s (SDK retries off)", spec.mode, where)
        return client

    def get_conn(self) -> BlobServiceClient:
        return self.blob_service_client

    def container_client(self, container: str) -> ContainerClient:
        return self.blob_service_client.get_container_client(container)

    def blob_client(self, container: str, blob: str) -> BlobClient:
        return self.blob_service_client.get_blob_client(container, blob)

    @cached_property
    def client(self) -> AzureBlobClient:
        """The engine's adapter over the service client."""
        return AzureBlobClient(self.blob_service_client)

    # ------------------------------------------------------------------ transfers
    # download_file, upload_file: AzureBlobTransfers (shared with the command line)
    def copy_blob_to_volume(
        self,
        container: str,
        blob: str,
        files_hook: DatabricksFilesHook,
        volume_path: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> UploadResult:
        """Blob -> Volume with no local copy: ranges pinned to the blob's ETag become multipart parts."""
        return self.blob_to_volume(
            container,
            blob,
            files_hook.client,
            volume_path,
            options=options,
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def copy_volume_to_blob(
        self,
        files_hook: DatabricksFilesHook,
        volume_path: str,
        container: str,
        blob: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> UploadResult:
        """Volume -> Blob with no local copy: ranges of the Volume file become staged blocks."""
        return self.volume_to_blob(
            files_hook.client,
            volume_path,
            container,
            blob,
            options=options,
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def test_connection(self) -> tuple[bool, str]:
        """For the UI's Test button when this package provides the ``wasb`` form."""
        try:
            next(iter(self.blob_service_client.list_containers(results_per_page=1)), None)
        except Exception as err:  # noqa: BLE001 - the UI shows the reason
            return False, str(err).splitlines()[0] if str(err) else type(err).__name__
        return True, "Connected: the account listed its containers"


def _public_url(url: str) -> str:
    """A client URL without its query: a connection string's SAS would otherwise reach the log."""
    return url.split("?", 1)[0]
