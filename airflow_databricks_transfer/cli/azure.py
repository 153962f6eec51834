"""Azure Blob verbs: ``azure-download``, ``azure-upload``, ``blob-to-volume``, ``volume-to-blob``.

They run the same transfers as ``AzureBlobTransferHook`` (``hooks/_azure_transfers.py``). Auth: a ``wasb``
Airflow connection (``--azure-conn-id``; imports Airflow), or the account URL (``--account-url``, or the
blob URL itself) with, from the environment, ``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_KEY``,
``AZURE_STORAGE_SAS_TOKEN`` (or a SAS in the blob URL's query), else ``DefaultAzureCredential``. The
connection rules are those of the ``wasb`` connection (``azure_connection.client_spec``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow_databricks_transfer.cli.errors import CliError, UsageError
from airflow_databricks_transfer.cli.files import upload_options
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.cli.runner import signals
from airflow_databricks_transfer.cli.state import local_key, open_checkpoint
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import DownloadOptions
from airflow_databricks_transfer.engine.upload import UploadOptions

if TYPE_CHECKING:
    from airflow_databricks_transfer.hooks._azure_transfers import AzureBlobTransfers

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_KEY = "AZURE_STORAGE_KEY"
ENV_SAS = "AZURE_STORAGE_SAS_TOKEN"
ENV_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"


@dataclass(frozen=True)
class BlobArg:
    """A blob named on the command line; ``sas`` (from a URL's query) is never printed."""

    container: str
    blob: str
    account_url: str | None = None
    sas: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return f"{self.container}/{self.blob}"


def _path_style(host: str) -> bool:
    """Azurite and other emulators put the account in the path (``http://127.0.0.1:10000/acct/...``)."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_blob(text: str) -> BlobArg:
    """``container/blob/name``, or a blob URL (``https://acct.blob.core.windows.net/c/b?<sas>``)."""
    if "://" not in text:
        container, _, blob = text.partition("/")
        if not container or not blob:
            raise UsageError(f"expected container/blob or a blob URL, got {text!r}")
        return BlobArg(container, blob)
    url = urlsplit(text)
    segments = url.path.lstrip("/").split("/")
    base = f"{url.scheme}://{url.netloc}"
    if _path_style(url.hostname or ""):
        if not segments or not segments[0]:
            raise UsageError("a path-style blob URL needs /<account>/<container>/<blob>")
        base, segments = f"{base}/{segments[0]}", segments[1:]
    if len(segments) < 2 or not segments[0] or not segments[-1]:
        raise UsageError(f"the blob URL names no container and blob: {url.scheme}://{url.netloc}{url.path}")
    return BlobArg(segments[0], unquote("/".join(segments[1:])), base, url.query or None)


def azure_transfers(args: argparse.Namespace, *blobs: BlobArg) -> AzureBlobTransfers:
    # the Azure SDK (and, with --azure-conn-id, Airflow) load only here
    from airflow_databricks_transfer.cli import azure_auth

    return azure_auth.transfers(args, *blobs)


def _databricks_files(args: argparse.Namespace) -> Any:
    from airflow_databricks_transfer.cli import auth

    return auth.databricks(args).files


def _uri(transfers: AzureBlobTransfers, blob: BlobArg) -> str:
    from airflow_databricks_transfer.clients.azure_blob import BlobRef

    return transfers.client.uri(BlobRef(blob.container, blob.blob))


def _blob_size(transfers: AzureBlobTransfers, blob: BlobArg) -> int:
    from airflow_databricks_transfer.clients.azure_blob import BlobRef
    from airflow_databricks_transfer.engine.errors import RemoteNotFoundError

    remote = transfers.client.stat(BlobRef(blob.container, blob.blob))
    if remote is None:
        raise RemoteNotFoundError(f"{blob.display} does not exist")
    return remote.size


def _dry_run(source: str, destination: str, nbytes: int, checkpoint: object) -> dict[str, Any]:
    """What ``--dry-run`` reports: nothing is transferred."""
    return {
        "dry_run": True,
        "source": source,
        "destination": destination,
        "bytes": nbytes,
        "would_resume": checkpoint is not None,
    }


def _local_target(local: str, name: str) -> str:
    target = os.path.join(local, name.rsplit("/", 1)[-1]) if os.path.isdir(local) else local
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise CliError(f"{parent}: no such directory")
    return target


def azure_download(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    blob = parse_blob(args.blob)
    local = _local_target(args.local, blob.blob)
    transfers = azure_transfers(args, blob)
    uri = _uri(transfers, blob)
    sink, checkpoint = open_checkpoint(args, DownloadCheckpoint, "azure_blob.download", uri, local_key(local))
    if args.dry_run:
        return _dry_run(blob.display, local, _blob_size(transfers, blob), checkpoint)
    options = DownloadOptions(
        parallelism=args.parallelism,
        overwrite=not args.no_overwrite,
        bandwidth_limit_bytes_per_s=args.bandwidth_limit,
        progress_interval_s=display.engine_interval_s,
    )
    with signals(transfers), display:
        result = transfers.download_file(
            blob.container,
            blob.blob,
            local,
            chunk_size_bytes=args.part_size,
            options=options,
            checkpoint=checkpoint,
            sink=sink,
            subscribers=[display.subscriber(blob.display)],
        )
    return result.to_dict()


def _block_options(args: argparse.Namespace, display: Display, threshold: int) -> UploadOptions:
    from dataclasses import replace

    return replace(upload_options(args, display), multipart_threshold_bytes=threshold)


def azure_upload(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    if not os.path.isfile(args.local):
        raise CliError(f"{args.local}: no such file")
    blob = parse_blob(args.blob)
    transfers = azure_transfers(args, blob)
    uri = _uri(transfers, blob)
    sink, checkpoint = open_checkpoint(
        args, UploadCheckpoint, "azure_blob.upload", local_key(args.local), uri
    )
    if args.dry_run:
        return _dry_run(args.local, blob.display, os.path.getsize(args.local), checkpoint)
    with signals(transfers), display:
        result = transfers.upload_file(
            args.local,
            blob.container,
            blob.blob,
            options=_block_options(args, display, args.multipart_threshold),
            checkpoint=checkpoint,
            sink=sink,
            subscribers=[display.subscriber(blob.display)],
            create_container=args.create_container,
        )
    return result.to_dict()


def blob_to_volume(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    blob = parse_blob(args.blob)
    transfers = azure_transfers(args, blob)
    files = _databricks_files(args)
    uri = _uri(transfers, blob)
    sink, checkpoint = open_checkpoint(args, UploadCheckpoint, "azure_blob.to_volume", uri, args.volume_path)
    if args.dry_run:
        return _dry_run(blob.display, args.volume_path, _blob_size(transfers, blob), checkpoint)
    # multipart from the first byte: a single shot would hold the whole blob in memory
    options = _block_options(args, display, 1)
    with signals(transfers), display:
        try:
            result = transfers.blob_to_volume(
                blob.container,
                blob.blob,
                files,
                args.volume_path,
                options=options,
                checkpoint=checkpoint,
                sink=sink,
                subscribers=[display.subscriber(args.volume_path)],
            )
        finally:
            files.http.close()
    return result.to_dict()


def volume_to_blob(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    blob = parse_blob(args.blob)
    transfers = azure_transfers(args, blob)
    files = _databricks_files(args)
    uri = _uri(transfers, blob)
    sink, checkpoint = open_checkpoint(args, UploadCheckpoint, "volume.to_azure_blob", args.volume_path, uri)
    if args.dry_run:
        from airflow_databricks_transfer.engine.errors import RemoteNotFoundError

        remote = files.stat(args.volume_path)
        if remote is None:
            raise RemoteNotFoundError(f"{args.volume_path} does not exist")
        return _dry_run(args.volume_path, blob.display, remote.size, checkpoint)
    with signals(transfers), display:
        try:
            result = transfers.volume_to_blob(
                files,
                args.volume_path,
                blob.container,
                blob.blob,
                options=_block_options(args, display, 1),
                checkpoint=checkpoint,
                sink=sink,
                subscribers=[display.subscriber(blob.display)],
            )
        finally:
            files.http.close()
    return result.to_dict()


def azure_auth(*, conn_alias: bool) -> argparse.ArgumentParser:
    """Azure auth flags; with ``conn_alias``, ``--conn-id`` names the wasb connection too (for the verbs
    that do not talk to Databricks)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(
        "Azure auth",
        f"default: --account-url (or the blob URL) with {ENV_CONNECTION_STRING}, {ENV_KEY}, {ENV_SAS} or a "
        "SAS in the URL, else DefaultAzureCredential",
    )
    names = ["--azure-conn-id", "--conn-id"] if conn_alias else ["--azure-conn-id"]
    g.add_argument(*names, dest="azure_conn_id", help="an Airflow connection of type wasb; imports Airflow")
    g.add_argument("--account-url", help=f"https://<account>.blob.core.windows.net (or ${ENV_ACCOUNT_URL})")
    return p


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, db: argparse.ArgumentParser, transfer: Any
) -> None:
    from airflow_databricks_transfer.cli.args import size
    from airflow_databricks_transfer.engine.planning import MiB

    azure_only = [common, azure_auth(conn_alias=True), transfer]
    both = [common, azure_auth(conn_alias=False), db, transfer]
    blob_help = "container/blob, or a blob URL (https://<account>.blob.core.windows.net/<container>/<blob>)"

    p = sub.add_parser("azure-download", parents=azure_only, help="download a blob (resumable)")
    p.add_argument("blob", metavar="BLOB", help=blob_help)
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("--no-overwrite", action="store_true", help="fail if LOCAL exists")
    p.set_defaults(func=azure_download)

    p = sub.add_parser("azure-upload", parents=azure_only, help="upload a file as a block blob (resumable)")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("blob", metavar="BLOB", help=blob_help)
    p.add_argument("--create-container", action="store_true", help="create the container if missing")
    p.add_argument(
        "--multipart-threshold",
        type=size,
        default=16 * MiB,
        help="files at least this large go in staged blocks (default 16MiB)",
    )
    p.add_argument("--no-overwrite", action="store_true", help="fail if the blob exists")
    p.set_defaults(func=azure_upload)

    p = sub.add_parser("blob-to-volume", parents=both, help="copy a blob into a Volume, no local copy")
    p.add_argument("blob", metavar="BLOB", help=blob_help)
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument("--no-overwrite", action="store_true", help="fail if the Volume file exists")
    p.set_defaults(func=blob_to_volume, multipart_threshold=1)

    p = sub.add_parser("volume-to-blob", parents=both, help="copy a Volume file into a blob, no local copy")
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument("blob", metavar="BLOB", help=blob_help)
    p.add_argument("--no-overwrite", action="store_true", help="fail if the blob exists")
    p.set_defaults(func=volume_to_blob, multipart_threshold=1)
