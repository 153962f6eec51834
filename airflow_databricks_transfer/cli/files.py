"""Verbs on Volume files: ``upload`` (a file, or a tree through the sync engine), ``download``,
``list-remote``."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_databricks_transfer.cli.args import size
from airflow_databricks_transfer.cli.errors import CliError
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.cli.runner import Runner
from airflow_databricks_transfer.cli.state import local_key, open_checkpoint
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import DownloadOptions
from airflow_databricks_transfer.engine.errors import RemoteNotFoundError
from airflow_databricks_transfer.engine.planning import DEFAULT_MULTIPART_THRESHOLD_BYTES
from airflow_databricks_transfer.engine.upload import UploadOptions

if TYPE_CHECKING:
    from airflow_databricks_transfer.cli.auth import Databricks
    from airflow_databricks_transfer.clients.files_api import FileInfo, FilesApiClient

UPLOAD_KIND = "files_api.upload"
DOWNLOAD_KIND = "files_api.download"


def _databricks(args: argparse.Namespace) -> Databricks:
    # the Databricks SDK takes seconds to import: only verbs that talk to a workspace load it
    from airflow_databricks_transfer.cli import auth

    return auth.databricks(args)


def volume_file_path(volume_path: str, local: str) -> str:
    """``/Volumes/.../dir/`` (a trailing slash) means "into that folder, under the local file's name"."""
    return f"{volume_path}{Path(local).name}" if volume_path.endswith("/") else volume_path


def upload_options(args: argparse.Namespace, display: Display) -> UploadOptions:
    return UploadOptions(
        part_size_bytes=args.part_size,
        parallelism=args.parallelism,
        multipart_threshold_bytes=args.multipart_threshold,
        overwrite=not args.no_overwrite,
        bandwidth_limit_bytes_per_s=args.bandwidth_limit,
        progress_interval_s=display.engine_interval_s,
    )


def upload(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    local = args.local
    if not os.path.exists(local):
        raise CliError(f"{local}: no such file or directory")
    if os.path.isdir(local):
        from airflow_databricks_transfer.cli.sync import upload_tree

        args.render = tree_render
        return upload_tree(args, display)
    destination = volume_file_path(args.volume_path, local)
    size = os.path.getsize(local)
    sink, checkpoint = open_checkpoint(args, UploadCheckpoint, UPLOAD_KIND, local_key(local), destination)
    db = _databricks(args)
    if args.dry_run:
        remote = db.files.stat(destination)
        return {
            "dry_run": True,
            "source": local,
            "destination": destination,
            "bytes": size,
            "destination_exists": remote is not None,
            "would_resume": checkpoint is not None,
        }
    runner = Runner()
    with runner.signals(), display:
        try:
            result = runner.run_upload(
                db.files.upload_target(destination),
                local,
                upload_options(args, display),
                kind=UPLOAD_KIND,
                checkpoint=checkpoint,
                sink=sink,
                subscribers=[display.subscriber(destination)],
            )
        finally:
            db.files.http.close()
    return result.to_dict()


def download(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    source_path = args.volume_path
    local = args.local
    if os.path.isdir(local):
        local = os.path.join(local, source_path.rstrip("/").rsplit("/", 1)[-1])
    parent = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise CliError(f"{parent}: no such directory")
    db = _databricks(args)
    sink, checkpoint = open_checkpoint(args, DownloadCheckpoint, DOWNLOAD_KIND, source_path, local_key(local))
    if args.dry_run:
        remote = db.files.stat(source_path)
        if remote is None:
            raise RemoteNotFoundError(f"{source_path} does not exist")
        return {
            "dry_run": True,
            "source": source_path,
            "destination": local,
            "bytes": remote.size,
            "destination_exists": os.path.exists(local),
            "would_resume": checkpoint is not None,
        }
    options = DownloadOptions(
        parallelism=args.parallelism,
        overwrite=not args.no_overwrite,
        bandwidth_limit_bytes_per_s=args.bandwidth_limit,
        progress_interval_s=display.engine_interval_s,
        **({"chunk_size_bytes": args.part_size} if args.part_size else {}),
    )
    runner = Runner()
    with runner.signals(), display:
        try:
            result = runner.run_download(
                db.files.download_source(source_path),
                local,
                options,
                kind=DOWNLOAD_KIND,
                checkpoint=checkpoint,
                sink=sink,
                subscribers=[display.subscriber(source_path)],
            )
        finally:
            db.files.http.close()
    return result.to_dict()


# ---------------------------------------------------------------------- list-remote
def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _entry(info: FileInfo) -> dict[str, Any]:
    return {
        "path": info.path,
        "name": info.name,
        "is_directory": info.is_directory,
        "size": info.size,
        "last_modified": _iso(info.last_modified_ms),
        "last_modified_ms": info.last_modified_ms,
    }


def _walk(files: FilesApiClient, path: str, recursive: bool) -> list[FileInfo]:
    out: list[FileInfo] = []
    for entry in sorted(files.list_directory(path), key=lambda e: e.path):
        out.append(entry)
        if recursive and entry.is_directory:
            out.extend(_walk(files, entry.path, recursive))
    return out


def list_remote(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    db = _databricks(args)
    path = args.volume_path
    try:
        entries = [_entry(e) for e in _walk(db.files, path.rstrip("/") or "/", args.recursive)]
    except RemoteNotFoundError:
        remote = None if path.endswith("/") else db.files.stat(path)
        if remote is None:
            raise RemoteNotFoundError(f"{path}: no such file or directory in the workspace") from None
        modified = remote.last_modified_s
        entries = [
            {
                "path": path,
                "name": path.rsplit("/", 1)[-1],
                "is_directory": False,
                "size": remote.size,
                "last_modified": _iso(modified * 1000 if modified is not None else None),
                "last_modified_ms": modified * 1000 if modified is not None else None,
            }
        ]
    files = [e for e in entries if not e["is_directory"]]
    return {
        "path": path,
        "recursive": args.recursive,
        "entries": entries,
        "files": len(files),
        "directories": len(entries) - len(files),
        "bytes": sum(e["size"] or 0 for e in files),
    }


def render_listing(result: dict[str, Any]) -> str:
    lines = []
    for e in result["entries"]:
        size = "<dir>" if e["is_directory"] else str(e["size"])
        lines.append(f"{size:>14}  {e['last_modified'] or '-':<25}  {e['path']}")
    lines.append(f"{result['files']} files, {result['directories']} directories, {result['bytes']} bytes")
    return "\n".join(lines)


def tree_render(result: dict[str, Any]) -> str:
    from airflow_databricks_transfer.cli.sync import render

    return render(result)


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    from airflow_databricks_transfer.cli.sync import sync_flags

    p = sub.add_parser(
        "upload",
        parents=[*parents, sync_flags()],
        help="upload a file (resumable) or a tree into a Volume",
        description="Upload LOCAL to VOLUME_PATH. A file is uploaded in parallel parts and resumes when the "
        "same command runs again after an interruption; a VOLUME_PATH ending in / means into that folder. "
        "A directory is uploaded whole into the folder VOLUME_PATH through the sync engine (every file "
        "sent, nothing deleted; the tree flags apply).",
    )
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument(
        "--multipart-threshold",
        type=size,
        default=DEFAULT_MULTIPART_THRESHOLD_BYTES,
        help="files at least this large go in parallel parts (default 50MiB)",
    )
    p.add_argument("--no-overwrite", action="store_true", help="fail if the destination exists")
    p.set_defaults(func=upload)

    p = sub.add_parser(
        "download",
        parents=parents,
        help="download a Volume file (resumable)",
        description="Download VOLUME_PATH to LOCAL (a file, or an existing directory) through a partial file "
        "that is verified and renamed; an interrupted download resumes when the same command runs again.",
    )
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("--no-overwrite", action="store_true", help="fail if LOCAL exists")
    p.set_defaults(func=download)


def add_list_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "list-remote",
        parents=parents,
        help="list a Volume folder (sizes, modification times)",
    )
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    p.set_defaults(func=list_remote, render=render_listing)
