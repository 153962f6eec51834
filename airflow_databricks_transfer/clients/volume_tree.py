"""The sync's view of a Volume folder (``engine.sync.VolumeTree``) over the Files API client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from airflow_databricks_transfer.clients.files_api import (
    FILES,
    FileInfo,
    FilesApiClient,
    FilesApiUploadTarget,
    _quote,
    http_error,
)
from airflow_databricks_transfer.engine.errors import ConnectionLostError, RemoteNotFoundError
from airflow_databricks_transfer.engine.sync import RemoteFile

#: the manifest of a very large tree (about 150 bytes a file) stays well below this
MAX_SMALL_FILE_BYTES = 512 * 1024 * 1024


class FilesApiVolumeTree:
    """Listing, small reads and writes (the manifest), deletes and upload targets in one workspace."""

    def __init__(self, client: FilesApiClient, *, list_concurrency: int = 5) -> None:
        """``list_concurrency``: folders listed at once by a recursive listing."""
        self.client = client
        self.list_concurrency = max(1, list_concurrency)

    def list_files(self, folder: str, *, recursive: bool = True) -> dict[str, RemoteFile]:
        """Folder by folder, each level's folders ``list_concurrency`` at a time: a tree of 200 folders
        is 200 round trips, which one after another made a no-change sync wait on the network."""
        out: dict[str, RemoteFile] = {}
        root = folder.rstrip("/")
        try:
            entries = list(self.client.list_directory(root))
        except RemoteNotFoundError:
            return {}  # the target folder does not exist yet
        level = self._take(entries, "", root, out, recursive)
        if not level:
            return out
        with ThreadPoolExecutor(self.list_concurrency, thread_name_prefix="volume-list") as pool:
            while level:
                listed = list(pool.map(self._list_or_none, [path for _, path in level]))
                below: list[tuple[str, str]] = []
                for (prefix, path), found in zip(level, listed, strict=True):
                    if found is not None:  # None: deleted by someone else while we walked
                        below += self._take(found, prefix, path, out, recursive)
                level = below
        return out

    def _list_or_none(self, path: str) -> list[FileInfo] | None:
        try:
            return list(self.client.list_directory(path))
        except RemoteNotFoundError:
            return None

    @staticmethod
    def _take(
        entries: list[FileInfo], prefix: str, path: str, out: dict[str, RemoteFile], recursive: bool
    ) -> list[tuple[str, str]]:
        """Files into ``out``; the subfolders to list next, as (relative prefix, path)."""
        folders: list[tuple[str, str]] = []
        for e in entries:
            rel = f"{prefix}{e.name.rstrip('/')}"
            if e.is_directory:
                if recursive:
                    folders.append((f"{rel}/", f"{path}/{e.name.rstrip('/')}"))
            else:
                out[rel] = RemoteFile(e.size or 0, e.last_modified_ms or None)
        return folders

    def read_small(self, path: str) -> bytes | None:
        """The whole file (a manifest), or None when there is none; transient failures are retried."""

        def once() -> bytes | None:
            resp = self.client.workspace_request("GET", f"{FILES}{_quote(path, file=True)}")
            data = resp.read(MAX_SMALL_FILE_BYTES)
            if resp.status == 404:
                return None
            if resp.status >= 300:
                raise http_error(resp.status, data, resp.headers, f"read {path}")
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) != len(data):
                raise ConnectionLostError(f"read {path}: {len(data)} of {expected} bytes arrived")
            return data

        return self.client._retrying(once, f"read {path}")

    def write_small(self, path: str, data: bytes) -> None:
        """One PUT with overwrite: the server swaps the whole file in, so readers see old or new."""
        target = FilesApiUploadTarget(self.client, path)
        self.client._retrying(lambda: target.put_single(memoryview(data), overwrite=True), f"write {path}")

    def delete_file(self, path: str) -> None:
        self.client.delete_file(path)

    def upload_target(self, path: str) -> FilesApiUploadTarget:
        return self.client.upload_target(path)

    def check_writable_root(self, folder: str) -> None:
        volume = "/".join(folder.split("/")[:5])
        if not self.client.directory_exists(volume):
            raise RemoteNotFoundError(
                f"volume {volume} does not exist (or this identity cannot see it); create it first"
            )
