"""Airflow plugin of this provider (loaded through the ``airflow.plugins`` entry point).

Every Airflow process loads plugins (task processes too), so this module stays light: the Transfer
UI app (FastAPI, Airflow's security and models, ~2 s to import) is imported by the api-server on the
first request to it, through :class:`LazyTransferApp`.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_databricks_transfer.plugins.connection_test import ConnectionTestPortFix
from airflow_databricks_transfer.plugins.transfer_view import TAB_ROUTE

URL_PREFIX = "/adt-transfer"  # transfer_ui.URL_PREFIX; repeated so this module does not import it

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyTransferApp:
    """An ASGI app that imports :mod:`airflow_databricks_transfer.plugins.transfer_ui` when first called."""

    def __init__(self) -> None:
        self._app: Callable[[_Scope, _Receive, _Send], Awaitable[None]] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "airflow_databricks_transfer.plugins.transfer_ui:app"

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from airflow_databricks_transfer.plugins.transfer_ui import app  # noqa: PLC0415

                    self._app = app
        await self._app(scope, receive, send)


class DatabricksTransferPlugin(AirflowPlugin):
    """The Transfer tab and Transfers page, and the connections list's Test button fix.

    - ``fastapi_apps``: the Transfer UI (JSON endpoints and static pages) under ``/adt-transfer``;
      see :mod:`airflow_databricks_transfer.plugins.transfer_ui`.
    - ``external_views``: a "Transfer" tab on every task instance page (an iframe of the static page;
      the UI fills the placeholders, ``{MAP_INDEX}`` stays literal on unmapped task instances) and a
      "Transfers" page in the navigation.
    - ``fastapi_root_middlewares``: see :mod:`airflow_databricks_transfer.plugins.connection_test`.
    """

    name = "databricks_transfer"
    fastapi_apps = [{"app": LazyTransferApp(), "url_prefix": URL_PREFIX, "name": "Databricks transfers"}]
    external_views = [
        {
            "name": "Transfer",
            "href": URL_PREFIX.lstrip("/") + "/static/index.html?dag_id={DAG_ID}&run_id={RUN_ID}"
            "&task_id={TASK_ID}&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": TAB_ROUTE,
        },
        {
            "name": "Transfers",
            "href": URL_PREFIX.lstrip("/") + "/static/transfers.html",
            "destination": "nav",
            "url_route": "transfers",
            "category": "browse",
        },
    ]
    fastapi_root_middlewares = [
        {"middleware": ConnectionTestPortFix, "args": [], "kwargs": {}, "name": "databricks-test-port-0"}
    ]
