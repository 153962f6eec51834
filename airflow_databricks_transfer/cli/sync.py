"""``sync`` (one-way, local tree -> Volume folder, SHA-256 change detection) and ``upload`` of a tree.

Both run the sync engine (``engine/sync.py``); a tree ``upload`` is a sync with ``force_upload`` (every
file sent, whatever the manifest says) and never deletes. The hash cache and the per-file checkpoints of
large files live in the state dir, so an unchanged tree is not re-hashed and an interrupted sync resumes.
Exit code 1 when any file failed; the others are recorded in the manifest, so a rerun sends only those.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from airflow_databricks_transfer.cli.args import positive_int, size
from airflow_databricks_transfer.cli.errors import CliError
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.cli.runner import signals
from airflow_databricks_transfer.cli.state import LocalFileCheckpoints, state_dir
from airflow_databricks_transfer.engine.planning import DEFAULT_MULTIPART_THRESHOLD_BYTES, MiB
from airflow_databricks_transfer.engine.sync import SyncOptions, VolumeSync
from airflow_databricks_transfer.engine.tree import HashCache
from airflow_databricks_transfer.engine.upload import UploadOptions

HASH_CACHE = "sync-hash-cache.sqlite"


def sync_options(args: argparse.Namespace, display: Display, *, force: bool, delete: bool) -> SyncOptions:
    return SyncOptions(
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        skip_hidden=not args.include_hidden,
        naming=args.naming,
        force_upload=force,
        delete_removed=delete,
        concurrency=args.concurrency,
        memory_limit_bytes=args.memory_limit,
        progress_interval_s=display.engine_interval_s,
        upload=UploadOptions(
            part_size_bytes=args.part_size,
            parallelism=args.parallelism,
            multipart_threshold_bytes=args.multipart_threshold,
            bandwidth_limit_bytes_per_s=args.bandwidth_limit,
            progress_interval_s=display.engine_interval_s,
        ),
    )


def run_sync(
    args: argparse.Namespace, display: Display, local: str, target: str, options: SyncOptions
) -> dict[str, Any]:
    if not os.path.isdir(local):
        raise CliError(f"{local}: no such directory")
    from airflow_databricks_transfer.cli import auth
    from airflow_databricks_transfer.clients.volume_tree import FilesApiVolumeTree

    db = auth.databricks(args)
    overall, per_file = display.tree(f"sync to {target}")
    sync = VolumeSync(
        FilesApiVolumeTree(db.files),
        local,
        target,
        options,
        hash_cache=HashCache(state_dir(args) / HASH_CACHE),
        checkpoints=LocalFileCheckpoints(args, local, target),
        subscribers=[overall],
        file_subscribers=per_file,
    )
    try:
        with signals(sync), display:
            result = sync.run(dry_run=args.dry_run)
    finally:
        db.files.http.close()
    return result.to_dict(max_listed=args.max_listed)


def sync(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    options = sync_options(args, display, force=args.force, delete=args.delete)
    return run_sync(args, display, args.local, args.volume_path, options)


def upload_tree(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    """``upload DIR VOLUME_FOLDER``: every file under DIR, whatever the manifest says."""
    options = sync_options(args, display, force=True, delete=False)
    return run_sync(args, display, args.local, args.volume_path, options)


def render(result: dict[str, Any]) -> str:
    """A summary line, then what a dry run would do, what changed remotely, and what failed."""
    if result["dry_run"]:
        head = (
            f"sync to {result['target']} (dry run): would upload {len(result['actions'])} files, "
            f"delete {len(result['deletes'])}; {result['skipped']} unchanged"
        )
    else:
        head = (
            f"sync to {result['target']}: uploaded {result['uploaded']} files ({result['bytes_uploaded']} "
            f"bytes), {result['skipped']} unchanged, {result['failed']} failed, {result['deleted']} deleted, "
            f"{result['seconds']:.1f} s ({result['files_per_s']:.1f} files/s)"
        )
    lines = [head]
    if result["dry_run"]:
        lines += [f"  would upload {a['path']} ({a['reason']}, {a['size']} bytes)" for a in result["actions"]]
        lines += [f"  would delete {rel}" for rel in result["deletes"]]
    lines += [f"  changed on the Volume since the last sync: {rel}" for rel in result["remote_changed"]]
    lines += [f"  failed: {f['path']}: {f['reason']}" for f in result["failures"]]
    return "\n".join(lines)


def sync_flags() -> argparse.ArgumentParser:
    """Flags of every tree transfer (``sync`` and ``upload`` of a directory)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("tree (sync, or upload of a directory)")
    g.add_argument("--include", action="append", default=[], metavar="GLOB", help="relative paths to take")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="relative paths to skip")
    g.add_argument("--include-hidden", action="store_true", help="also take hidden files and folders")
    g.add_argument("--naming", choices=["mirror", "content"], default="mirror", help="remote names")
    g.add_argument("--concurrency", type=positive_int, default=5, help="files at once (default 5)")
    g.add_argument("--memory-limit", type=size, default=512 * MiB, help="part buffers of all files")
    g.add_argument("--max-listed", type=positive_int, default=200, help="actions/failures in the result")
    return p


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sync",
        parents=[*parents, sync_flags()],
        help="one-way sync of a local tree into a Volume folder (SHA-256 change detection)",
        description="Upload what changed under LOCAL into the Volume folder VOLUME_PATH: a manifest in "
        "the folder records each file's SHA-256; unchanged files are skipped without being read again.",
    )
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("volume_path", metavar="VOLUME_PATH")
    p.add_argument("--force", action="store_true", help="send every file, ignoring manifest and cache")
    p.add_argument("--delete", action="store_true", help="delete remote files gone locally (in the folder)")
    p.add_argument(
        "--multipart-threshold",
        type=size,
        default=DEFAULT_MULTIPART_THRESHOLD_BYTES,
        help="files at least this large go in parallel parts (default 50MiB)",
    )
    p.set_defaults(func=sync, render=render)
