"""Provider metadata, read by Airflow's ProvidersManager via the ``apache_airflow_provider`` entry point.

Airflow refuses a provider whose ``package-name`` differs from its distribution name.
"""

from __future__ import annotations

from typing import Any

from airflow_databricks_transfer import __version__, azure_connection
from airflow_databricks_transfer.connection import connection_types

INTEGRATION = "Databricks Files API"
AZURE_INTEGRATION = "Azure Blob Storage"
ZEROBUS_INTEGRATION = "Databricks Zerobus"


def get_provider_info() -> dict[str, Any]:
    # package-name must equal the distribution name or Airflow refuses to register the provider.
    return {
        "package-name": "airflow-databricks-transfer",
        "name": "Databricks Transfer",
        "description": (
            "Resumable, parallel, verified transfers into and out of Databricks: Files API "
            "(Unity Catalog Volumes), Azure Blob Storage and Zerobus streaming ingestion."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.databricks.com/api/workspace/files",
                "tags": ["service"],
            },
            {
                "integration-name": AZURE_INTEGRATION,
                "external-doc-url": "https://learn.microsoft.com/azure/storage/blobs/",
                "tags": ["azure"],
            },
            {
                "integration-name": ZEROBUS_INTEGRATION,
                "external-doc-url": "https://docs.databricks.com/ingestion/zerobus-overview",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_databricks_transfer.hooks.files"]},
            {
                "integration-name": AZURE_INTEGRATION,
                "python-modules": ["airflow_databricks_transfer.hooks.azure_blob"],
            },
            {
                "integration-name": ZEROBUS_INTEGRATION,
                "python-modules": ["airflow_databricks_transfer.hooks.zerobus"],
            },
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_databricks_transfer.operators.files",
                    "airflow_databricks_transfer.operators.sync",
                ],
            },
            {
                "integration-name": AZURE_INTEGRATION,
                "python-modules": ["airflow_databricks_transfer.operators.azure_blob"],
            },
            {
                "integration-name": ZEROBUS_INTEGRATION,
                "python-modules": ["airflow_databricks_transfer.operators.zerobus"],
            },
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_databricks_transfer.sensors.files"]}
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_databricks_transfer.triggers.files"],
            }
        ],
        # Volume paths as Airflow assets / OpenLineage datasets (hook lineage): see lineage.py
        "asset-uris": [
            {
                "schemes": ["dbfs"],
                "handler": "airflow_databricks_transfer.lineage.sanitize_uri",
                "factory": "airflow_databricks_transfer.lineage.create_asset",
                "to_openlineage_converter": "airflow_databricks_transfer.lineage.asset_to_openlineage",
            }
        ],
        # the `databricks` and `wasb` forms, each only where its official provider does not define it
        "connection-types": connection_types() + azure_connection.connection_types(),
    }
