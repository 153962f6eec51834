"""Databricks auth for the command line: the SDK's default chain, a profile, or an Airflow connection.

Only ``--conn-id`` imports Airflow (through DatabricksFilesHook); everything else builds a plain
``WorkspaceClient``, so ``adt`` starts fast and never creates ``~/airflow``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from databricks.sdk.credentials_provider import CredentialsProvider, CredentialsStrategy

from airflow_databricks_transfer.cli.errors import CliError
from airflow_databricks_transfer.clients.files_api import FilesApiClient


@dataclass
class Databricks:
    """A workspace and its Files API client, however they were authenticated."""

    workspace: WorkspaceClient
    files: FilesApiClient
    source: str  # "profile X", "environment", "connection X": for messages, never a secret


def workspace_config(args: argparse.Namespace) -> Config:
    """The SDK's config from ``--profile``/``--host`` and its own chain; CliError when it has no auth."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "profile", None):
        kwargs["profile"] = args.profile
    if getattr(args, "host", None):
        kwargs["host"] = args.host
    try:
        return Config(**kwargs)
    except ValueError as err:  # the SDK's "cannot configure default credentials" and friends
        raise CliError(f"Databricks authentication is not configured: {_first_line(err)}") from None


def raw_config(args: argparse.Namespace) -> Config:
    """The SDK's config (host, client id and secret from the environment or a profile) without resolving
    its auth: Zerobus mints its own tokens, and its token endpoint need not serve the SDK's discovery."""
    kwargs: dict[str, Any] = {"credentials_strategy": _Unresolved()}
    if getattr(args, "profile", None):
        kwargs["profile"] = args.profile
    if getattr(args, "host", None):
        kwargs["host"] = args.host
    try:
        return Config(**kwargs)
    except ValueError as err:
        raise CliError(f"Databricks config: {_first_line(err)}") from None


class _Unresolved(CredentialsStrategy):
    def auth_type(self) -> str:
        return "zerobus-oauth"

    def __call__(self, cfg: Config) -> CredentialsProvider:
        return lambda: {}


def databricks(args: argparse.Namespace) -> Databricks:
    conn_id = getattr(args, "conn_id", None)
    if conn_id:
        return _from_connection(conn_id)
    config = workspace_config(args)
    workspace = WorkspaceClient(config=config)
    source = f"profile {args.profile}" if getattr(args, "profile", None) else "the Databricks SDK's chain"
    return Databricks(workspace, FilesApiClient.for_workspace(workspace), source)


def _from_connection(conn_id: str) -> Databricks:
    from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

    hook = DatabricksFilesHook(conn_id)
    try:
        files = hook.client
    except Exception as err:
        if type(err).__name__ == "AirflowNotFoundException":
            raise CliError(
                f"the Airflow connection {conn_id!r} is not defined (create it, type databricks, or set "
                f"AIRFLOW_CONN_{conn_id.upper()})"
            ) from None
        if isinstance(err, ValueError):
            raise CliError(f"connection {conn_id!r}: {_first_line(err)}") from None
        raise
    return Databricks(hook.workspace_client, files, f"connection {conn_id}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
