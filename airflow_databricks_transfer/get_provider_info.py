"""Provider metadata, read by Airflow's ProvidersManager via the ``apache_airflow_provider`` entry point.

Airflow refuses a provider whose ``package-name`` differs from its distribution name.
"""

from __future__ import annotations

from typing import Any

from airflow_databricks_transfer import __version__


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
                "integration-name": "Databricks Files API",
                "external-doc-url": "https://docs.databricks.com/api/workspace/files",
                "tags": ["service"],
            }
        ],
    }
