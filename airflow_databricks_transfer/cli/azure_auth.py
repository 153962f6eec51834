"""Azure auth for the command line: a ``wasb`` Airflow connection, or the environment's credentials.

Imported only by the Azure verbs (it loads the Azure SDK). The environment maps onto the fields of a
``wasb`` connection, so ``azure_connection.client_spec`` applies the same rules as the Airflow hook.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from airflow_databricks_transfer.azure_connection import build_client, client_spec
from airflow_databricks_transfer.cli.azure import (
    ENV_ACCOUNT_URL,
    ENV_CONNECTION_STRING,
    ENV_KEY,
    ENV_SAS,
    BlobArg,
)
from airflow_databricks_transfer.cli.errors import CliError
from airflow_databricks_transfer.cli.runner import Runner
from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient
from airflow_databricks_transfer.hooks._azure_transfers import AzureBlobTransfers


class CliAzureTransfers(Runner, AzureBlobTransfers):
    """The hook's Azure transfers over a client built from the environment."""

    def __init__(self, client: AzureBlobClient) -> None:
        self._client = client

    @property
    def client(self) -> AzureBlobClient:
        return self._client


def transfers(args: argparse.Namespace, *blobs: BlobArg) -> AzureBlobTransfers:
    """The transfers over a wasb connection (the hook) or the environment's Azure credentials."""
    conn_id = getattr(args, "azure_conn_id", None)
    if conn_id:
        from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook

        return AzureBlobTransferHook(conn_id)
    extra: dict[str, Any] = {}
    sas = next((b.sas for b in blobs if b.sas), None)
    if os.environ.get(ENV_CONNECTION_STRING):
        extra["connection_string"] = os.environ[ENV_CONNECTION_STRING]
    elif os.environ.get(ENV_KEY):
        extra["account_key"] = os.environ[ENV_KEY]
    elif sas or os.environ.get(ENV_SAS):
        extra["sas_token"] = sas or os.environ[ENV_SAS]
    account_url = (
        getattr(args, "account_url", None)
        or next((b.account_url for b in blobs if b.account_url), None)
        or os.environ.get(ENV_ACCOUNT_URL)
    )
    if not account_url and "connection_string" not in extra:
        raise CliError(
            f"no Azure storage account: pass --account-url or a blob URL, set {ENV_CONNECTION_STRING}, "
            "or use --azure-conn-id"
        )
    try:
        spec = client_spec("command line", account_url, None, None, extra)
        service = build_client(spec)
    except ValueError as err:
        raise CliError(f"Azure: {err}") from None
    return CliAzureTransfers(AzureBlobClient(service))
