"""DatabricksFilesHook: an Airflow ``databricks`` connection -> a Files API client and the transfer engine.

Thin on purpose: it builds a databricks-sdk ``WorkspaceClient`` from the connection (field meanings as in
the official Databricks provider; see ``airflow_databricks_transfer.connection``) and hands the engine a
client. It does not need the official Databricks provider, and uses its connection form when installed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer import lineage
from airflow_databricks_transfer.clients.files_api import FileInfo, FilesApiClient
from airflow_databricks_transfer.connection import config_kwargs, hook_field_behaviour
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import DownloadOptions, DownloadResult
from airflow_databricks_transfer.engine.errors import RemoteNotFoundError
from airflow_databricks_transfer.engine.ports import DownloadCheckpointSink, UploadCheckpointSink
from airflow_databricks_transfer.engine.progress import Subscriber
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.upload import UploadOptions, UploadResult
from airflow_databricks_transfer.hooks._running import CancellableTransfers


class DatabricksFilesHook(CancellableTransfers, BaseHook):
    """Files API (Unity Catalog Volumes) transfers over a ``databricks`` connection.

    :param databricks_conn_id: the Airflow connection (type ``databricks``).
    """

    conn_name_attr = "databricks_conn_id"
    default_conn_name = "databricks_default"
    conn_type = "databricks"
    hook_name = "Databricks Files API"

    def __init__(
        self,
        databricks_conn_id: str = default_conn_name,
        *,
        use_presigned_urls: bool = True,
        metadata_retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.databricks_conn_id = databricks_conn_id
        self.use_presigned_urls = use_presigned_urls
        # retries of metadata and listing calls (the trigger has its own bounded loop: one attempt each)
        self.metadata_retry = metadata_retry

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's field behaviour, from the definitions the provider info declares too."""
        return hook_field_behaviour()

    @cached_property
    def workspace_client(self) -> WorkspaceClient:
        conn = self.get_connection(self.databricks_conn_id)
        kwargs = config_kwargs(conn.host, conn.login, conn.password, conn.extra_dejson)
        return WorkspaceClient(config=Config(**kwargs))

    @cached_property
    def client(self) -> FilesApiClient:
        # the connection's http_timeout_seconds also bounds the data path (as no progress for that long)
        return FilesApiClient.for_workspace(
            self.workspace_client, use_presigned=self.use_presigned_urls, retry=self.metadata_retry
        )

    def test_connection(self) -> tuple[bool, str]:
        try:
            next(iter(self.workspace_client.catalogs.list()), None)
        except Exception as err:  # noqa: BLE001 - the UI shows the reason
            return False, str(err)
        return True, "Connected: Unity Catalog answered"

    # ------------------------------------------------------------------ transfers
    def upload_file(
        self,
        local_path: str,
        volume_path: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> UploadResult:
        """Upload (single-shot or parallel multipart), resuming from ``checkpoint`` when it still fits."""
        result = self.run_upload(
            self.client.upload_target(volume_path),
            local_path,
            options,
            kind="files_api.upload",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )
        lineage.report(self, inputs=[lineage.local_uri(local_path)], outputs=[self.volume_uri(volume_path)])
        return result

    def download_file(
        self,
        volume_path: str,
        local_path: str,
        *,
        options: DownloadOptions | None = None,
        checkpoint: DownloadCheckpoint | None = None,
        sink: DownloadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> DownloadResult:
        """Parallel ranged download into a temp file beside ``local_path``, verified, then renamed."""
        result = self.run_download(
            self.client.download_source(volume_path),
            local_path,
            options,
            kind="files_api.download",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )
        lineage.report(self, inputs=[self.volume_uri(volume_path)], outputs=[lineage.local_uri(local_path)])
        return result

    def volume_uri(self, volume_path: str) -> str:
        """The Airflow asset URI of a Volume path in this workspace (``dbfs://<host>/Volumes/...``)."""
        return lineage.volume_uri(self.client.host, volume_path)

    def _close_data_path(self) -> None:
        # the workers are gone: close their data-path sockets instead of leaving them to the GC
        if "client" in self.__dict__:
            self.client.http.close()

    # ------------------------------------------------------------------ metadata and directories
    def get_metadata(self, volume_path: str) -> dict[str, Any] | None:
        """Size, ETag (None: the workspace may send none) and Last-Modified of a file, or None if missing."""
        remote = self.client.stat(volume_path)
        return None if remote is None else remote.to_dict()

    def exists(self, volume_path: str) -> bool:
        """True for an existing file or directory."""
        return self.client.stat(volume_path) is not None or self.client.directory_exists(volume_path)

    def list_directory(self, volume_path: str, *, recursive: bool = False) -> list[FileInfo]:
        return list(self._walk(volume_path, recursive))

    def _walk(self, volume_path: str, recursive: bool) -> Iterator[FileInfo]:
        for entry in self.client.list_directory(volume_path):
            yield entry
            if recursive and entry.is_directory:
                yield from self._walk(entry.path, recursive)

    def create_directory(self, volume_path: str) -> None:
        self.client.create_directory(volume_path)

    def delete(self, volume_path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory (with ``recursive``, its contents first)."""
        if self.client.stat(volume_path) is not None:
            self.client.delete_file(volume_path)
            return
        if not self.client.directory_exists(volume_path):
            raise RemoteNotFoundError(f"{volume_path} does not exist")
        if recursive:
            for entry in self.client.list_directory(volume_path):
                self.delete(entry.path, recursive=True)
        self.client.delete_directory(volume_path)


_GLOB_CHARS = "*?["


def _is_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def split_glob(pattern: str) -> tuple[str, str | None]:
    """(the deepest folder without wildcards, the pattern) or (path, None) for a plain path."""
    if not _is_glob(pattern):
        return pattern, None
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/", pattern


def find_matches(hook: DatabricksFilesHook, pattern: str) -> dict[str, int]:
    """{path: size} of the files matching ``pattern`` (a path or a glob; ``*`` does not cross ``/``),
    in path order: listings come in no particular order, and the sensor's XCom should not depend on it.

    Lists only the folders the pattern can reach: the literal prefix folder, then, level by level, the
    subfolders whose names match that level's segment, never deeper than the pattern. A literal segment
    below a wildcard is addressed directly, without listing its parent.
    """
    base, glob = split_glob(pattern)
    if glob is None:
        meta = hook.get_metadata(pattern)
        return {} if meta is None else {pattern: int(meta["size"])}
    segments = [s for s in glob[len(base) :].split("/") if s]
    found: dict[str, int] = {}
    _match_level(hook, base.rstrip("/"), segments, found)
    return dict(sorted(found.items()))


def _match_level(hook: DatabricksFilesHook, folder: str, segments: list[str], found: dict[str, int]) -> None:
    head, rest = segments[0], segments[1:]
    if not _is_glob(head):
        path = f"{folder}/{head}"
        if rest:
            _match_level(hook, path, rest, found)
        elif (meta := hook.get_metadata(path)) is not None:
            found[path] = int(meta["size"])
        return
    try:
        entries = hook.list_directory(folder)
    except RemoteNotFoundError:
        return  # the folder does not exist (yet): no matches below it
    for entry in entries:
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        if not fnmatch.fnmatchcase(name, head):
            continue
        path = f"{folder}/{name}"
        if rest:
            if entry.is_directory:
                _match_level(hook, path, rest, found)
        elif not entry.is_directory:
            found[path] = entry.size or 0
