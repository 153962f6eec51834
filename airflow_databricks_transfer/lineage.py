"""Lineage names for what the Files API transfers touch: local files and Unity Catalog Volume paths.

Names follow the OpenLineage naming spec (https://openlineage.io/docs/spec/naming): a local file is
namespace ``file`` with its absolute path as name (the Airflow asset ``file:///abs/path``, whose
normaliser and OpenLineage converter come with apache-airflow-providers-common-io), and a Volume path
is a DBFS dataset, namespace ``dbfs://{workspace}`` with the ``/Volumes/...`` path as name (the Airflow
asset ``dbfs://{workspace host}/Volumes/...``). The ``dbfs`` scheme is registered by this provider
(``asset-uris`` in get_provider_info), so Airflow normalises such assets and OpenLineage sees them.

Lineage must never fail a transfer: reporting errors are logged and swallowed.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseHook
from airflow.sdk.lineage import get_hook_lineage_collector

if TYPE_CHECKING:
    from urllib.parse import SplitResult

log = logging.getLogger(__name__)

VOLUME_SCHEME = "dbfs"


def workspace_authority(host: str) -> str:
    """``adb-1.2.azuredatabricks.net`` from ``https://adb-1.2.azuredatabricks.net/``."""
    parsed = urllib.parse.urlsplit(host if "://" in host else f"https://{host}")
    return (parsed.netloc or parsed.path).rstrip("/").lower()


def volume_uri(host: str, volume_path: str) -> str:
    return f"{VOLUME_SCHEME}://{workspace_authority(host)}/{volume_path.lstrip('/')}"


def local_uri(local_path: str | os.PathLike[str]) -> str:
    return f"file://{os.path.abspath(os.fspath(local_path))}"


def report(context: BaseHook, *, inputs: list[str], outputs: list[str]) -> None:
    """Tell Airflow's hook lineage collector what a hook read and wrote (``context`` is the hook)."""
    try:
        collector = get_hook_lineage_collector()
        for uri in inputs:
            collector.add_input_asset(context=context, uri=uri)
        for uri in outputs:
            collector.add_output_asset(context=context, uri=uri)
    except Exception:  # lineage is best effort: the transfer itself already succeeded
        log.debug("Could not report hook lineage", exc_info=True)


# ---------------------------------------------------------------------- the dbfs asset scheme
def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Airflow's normaliser for ``dbfs://`` assets: a workspace and an absolute path are required."""
    if not uri.netloc:
        raise ValueError("a dbfs:// asset URI needs the workspace host, e.g. dbfs://adb-1.2.net/Volumes/...")
    if not uri.path or uri.path == "/":
        raise ValueError("a dbfs:// asset URI needs a path, e.g. /Volumes/<catalog>/<schema>/<volume>/...")
    return uri._replace(netloc=uri.netloc.lower())


def create_asset(*, host: str, path: str, extra: dict[str, Any] | None = None) -> Asset:
    """Asset factory for the ``dbfs`` scheme (used by the hook lineage collector's ``scheme=`` form)."""
    return Asset(uri=volume_uri(host, path), extra=extra)


def asset_to_openlineage(asset: Asset, lineage_context: Any) -> Any:
    """``dbfs://host/Volumes/x`` -> OpenLineage Dataset(namespace ``dbfs://host``, name ``/Volumes/x``)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset  # noqa: PLC0415 - optional

    parsed = urllib.parse.urlsplit(asset.uri)
    return Dataset(namespace=f"{VOLUME_SCHEME}://{parsed.netloc}", name=parsed.path)


def openlineage_datasets(host: str, *, local_path: str, volume_path: str) -> tuple[Any, Any]:
    """(local file, Volume file) as OpenLineage Datasets, named as in the module docstring."""
    from airflow.providers.common.compat.openlineage.facet import Dataset  # noqa: PLC0415 - optional

    local = Dataset(namespace="file", name=os.path.abspath(local_path))
    volume = Dataset(
        namespace=f"{VOLUME_SCHEME}://{workspace_authority(host)}", name=f"/{volume_path.lstrip('/')}"
    )
    return local, volume
