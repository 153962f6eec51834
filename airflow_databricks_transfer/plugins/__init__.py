"""Airflow plugin of this provider (loaded through the ``airflow.plugins`` entry point)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_databricks_transfer.plugins.connection_test import ConnectionTestPortFix


class DatabricksTransferPlugin(AirflowPlugin):
    """Makes the connections list's Test button work for ``databricks`` connections on Airflow 3.3.

    See :mod:`airflow_databricks_transfer.plugins.connection_test` for the why.
    """

    name = "databricks_transfer"
    fastapi_root_middlewares = [
        {"middleware": ConnectionTestPortFix, "args": [], "kwargs": {}, "name": "databricks-test-port-0"}
    ]
