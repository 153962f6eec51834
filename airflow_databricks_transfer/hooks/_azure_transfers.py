"""Azure Blob transfers without Airflow: what ``AzureBlobTransferHook`` runs, and the command line too.

The hook adds only the ``wasb`` connection (how the ``BlobServiceClient`` is built); the choices of a
transfer (range and block sizes, multipart from the first byte for remote-to-remote copies, the
checkpoint kinds) live here once, so both front ends make the same ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from airflow_databricks_transfer.clients.azure_blob import (
    DEFAULT_BLOCK_BYTES,
    AzureBlobClient,
    BlobRef,
    chunk_size_for,
    translate,
)
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import DownloadOptions, DownloadResult
from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS, MiB
from airflow_databricks_transfer.engine.ports import DownloadCheckpointSink, UploadCheckpointSink
from airflow_databricks_transfer.engine.progress import Subscriber
from airflow_databricks_transfer.engine.sources import RemoteRangeSource
from airflow_databricks_transfer.engine.upload import UploadOptions, UploadResult
from airflow_databricks_transfer.hooks._running import CancellableTransfers

if TYPE_CHECKING:  # the Databricks SDK takes seconds to import: Azure-only callers never pay for it
    from airflow_databricks_transfer.clients.files_api import FilesApiClient


class AzureBlobTransfers(CancellableTransfers):
    """Blob downloads and uploads, and copies between a blob and a Volume file, over ``self.client``."""

    @property
    def client(self) -> AzureBlobClient:
        """The engine's adapter over the account's ``BlobServiceClient``."""
        raise NotImplementedError

    def download_file(
        self,
        container: str,
        blob: str,
        local_path: str,
        *,
        chunk_size_bytes: int | None = None,
        options: DownloadOptions | None = None,
        checkpoint: DownloadCheckpoint | None = None,
        sink: DownloadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> DownloadResult:
        """Parallel ranged download pinned to the blob's ETag into a partial file beside ``local_path``;
        verified (size, Content-MD5 when the blob has one, ``options.verifiers``), then renamed.

        ``chunk_size_bytes`` None picks the range size from the blob's size (``chunk_size_for``); a
        checkpoint keeps the size it was written with.
        """
        source = self.client.download_source(BlobRef(container, blob))
        opts = options or DownloadOptions()
        if checkpoint is not None:
            chunk = checkpoint.chunk_size
        elif chunk_size_bytes is not None:
            chunk = chunk_size_bytes
        else:
            chunk = chunk_size_for(source.stat().size)
        return self.run_download(
            source,
            local_path,
            replace(opts, chunk_size_bytes=chunk),
            kind="azure_blob.download",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def upload_file(
        self,
        local_path: str,
        container: str,
        blob: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
        create_container: bool = False,
    ) -> UploadResult:
        """Staged blocks (parallel, each with Content-MD5) and one block list with the file's MD5; a
        retry with ``checkpoint`` asks the service for its staged blocks and sends only the others."""
        if create_container:
            self.ensure_container(container)
        opts = for_blocks(options)
        return self.run_upload(
            self.client.upload_target(BlobRef(container, blob), overwrite=opts.overwrite),
            local_path,
            opts,
            kind="azure_blob.upload",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def blob_to_volume(
        self,
        container: str,
        blob: str,
        files: FilesApiClient,
        volume_path: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> UploadResult:
        """Blob -> Volume with no local copy: ranges pinned to the blob's ETag become multipart parts."""
        source = RemoteRangeSource(self.client.download_source(BlobRef(container, blob)))
        return self.run_upload(
            files.upload_target(volume_path),
            source,
            # multipart from the first byte: a single shot would hold the whole blob in memory
            options or UploadOptions(multipart_threshold_bytes=1),
            kind="azure_blob.to_volume",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def volume_to_blob(
        self,
        files: FilesApiClient,
        volume_path: str,
        container: str,
        blob: str,
        *,
        options: UploadOptions | None = None,
        checkpoint: UploadCheckpoint | None = None,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
    ) -> UploadResult:
        """Volume -> Blob with no local copy: ranges of the Volume file become staged blocks."""
        source = RemoteRangeSource(files.download_source(volume_path))
        opts = for_blocks(options, threshold=1)
        return self.run_upload(
            self.client.upload_target(BlobRef(container, blob), overwrite=opts.overwrite),
            source,
            opts,
            kind="volume.to_azure_blob",
            checkpoint=checkpoint,
            sink=sink,
            subscribers=subscribers,
        )

    def ensure_container(self, container: str) -> None:
        """Create the container unless it exists."""
        from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415 - SDK loaded on use

        try:
            self.client.service.get_container_client(container).create_container()
        except ResourceExistsError:
            pass
        except Exception as err:
            raise translate(err, f"create container {container}") from err


def for_blocks(options: UploadOptions | None, threshold: int = 16 * MiB) -> UploadOptions:
    """Block limits (50,000 blocks) and an 8 MiB default block, unless the caller chose a size."""
    opts = options or UploadOptions(multipart_threshold_bytes=threshold)
    part = opts.part_size_bytes or DEFAULT_BLOCK_BYTES
    return replace(opts, limits=AZURE_BLOCKS, part_size_bytes=part)
