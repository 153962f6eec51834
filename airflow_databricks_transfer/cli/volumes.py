"""``create-volume``: a Unity Catalog volume through the SDK's Unity Catalog API."""

from __future__ import annotations

import argparse
from typing import Any

from airflow_databricks_transfer.cli.errors import CliError, UsageError
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.engine.errors import AlreadyExistsError


def create_volume(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    from databricks.sdk.errors.base import DatabricksError
    from databricks.sdk.service.catalog import VolumeType

    from airflow_databricks_transfer.cli import auth
    from airflow_databricks_transfer.clients.files_api import sdk_error

    volume_type = VolumeType(args.volume_type)
    if volume_type is VolumeType.EXTERNAL and not args.storage_location:
        raise UsageError("an EXTERNAL volume needs --storage-location")
    full_name = f"{args.catalog}.{args.schema}.{args.volume}"
    workspace = auth.databricks(args).workspace
    created = True
    try:
        info = workspace.volumes.create(
            args.catalog,
            args.schema,
            args.volume,
            volume_type,
            comment=args.comment,
            storage_location=args.storage_location,
        )
    except DatabricksError as err:
        error = sdk_error(err, f"create volume {full_name}")
        if not isinstance(error, AlreadyExistsError):
            raise error from None
        if not args.exist_ok:
            raise CliError(f"the volume {full_name} already exists (pass --exist-ok to accept it)") from None
        created = False
        try:
            info = workspace.volumes.read(full_name)
        except DatabricksError as read_err:
            raise sdk_error(read_err, f"read volume {full_name}") from None
    return {
        "created": created,
        "full_name": full_name,
        "path": f"/Volumes/{args.catalog}/{args.schema}/{args.volume}",
        "volume": info.as_dict(),
    }


def render(result: dict[str, Any]) -> str:
    state = "created" if result["created"] else "already exists"
    return f"{result['full_name']}: {state} ({result['path']})"


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("create-volume", parents=parents, help="create a Unity Catalog volume")
    p.add_argument("--catalog", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--volume", required=True, help="the volume's name")
    p.add_argument("--volume-type", choices=["MANAGED", "EXTERNAL"], default="MANAGED")
    p.add_argument("--storage-location", help="cloud URL of an EXTERNAL volume")
    p.add_argument("--comment")
    p.add_argument("--exist-ok", action="store_true", help="an existing volume is success (exit 0)")
    p.set_defaults(func=create_volume, render=render)
