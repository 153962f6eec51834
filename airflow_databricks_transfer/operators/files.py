"""Large-file upload to, and resilient download from, Unity Catalog Volumes; both resume on retry.

Each finished part (upload) or chunk (download) is checkpointed to the task state store, so when Airflow
retries the task, even on another worker, the new try sends only what the failed one had not finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, TypeVar

from airflow.sdk import BaseOperator, Context

from airflow_databricks_transfer import lineage
from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import DownloadOptions, DownloadResult
from airflow_databricks_transfer.engine.planning import DEFAULT_MULTIPART_THRESHOLD_BYTES
from airflow_databricks_transfer.engine.progress import Subscriber
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.upload import UploadOptions, UploadResult
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from airflow_databricks_transfer.operators._common import (
    RecordsTries,
    as_int,
    fail_fast,
    opt_float,
    opt_int,
    opt_str,
)
from airflow_databricks_transfer.ui_record import recording

_T = TypeVar("_T")

_COMMON_PARAMS = """
    :param databricks_conn_id: the Airflow connection (type ``databricks``) (templated).
    :param overwrite: replace an existing destination file (default True); False fails if it exists.
    :param parallelism: concurrent workers (templated); memory is about parallelism x part/chunk size.
    :param bandwidth_limit_bytes_per_s: token-bucket limit shared by all workers; None or 0 means no
        limit (templated).
    :param use_presigned_urls: move data through presigned cloud-storage URLs when the workspace offers
        them (faster, parallel); False uses the workspace's own Files API endpoints only.
    :param progress_interval_s: seconds between progress lines in the task log.
    :param checkpoint_key: task state store key of the checkpoint (two transfers in one task need
        different keys).
    :param transfer_retry: per-request backoff inside one try (attempts, delays, Retry-After cap);
        Airflow's own ``retries`` then re-run the task, which resumes from its checkpoint.
    :param checkpoint_interval_s: least time between two checkpoint writes to the task state store
        (each costs API calls; the final state is always written). Default 1 s.
"""


def _documents_common_params(cls: type[_T]) -> type[_T]:
    """Each operator's API page lists the options it inherits: one text, appended to each docstring."""
    cls.__doc__ = f"{(cls.__doc__ or '').rstrip()}\n{_COMMON_PARAMS}"
    return cls


@_documents_common_params
class _FilesTransferOperator(RecordsTries, BaseOperator):
    """Common options of both transfer operators (appended to each one's docstring, for its API page).

    :param local_path: the local file (templated).
    :param volume_path: the Volume file, ``/Volumes/<catalog>/<schema>/<volume>/...`` (templated).
    """

    template_fields: Sequence[str] = (
        "local_path",
        "volume_path",
        "databricks_conn_id",
        "parallelism",
        "bandwidth_limit_bytes_per_s",
    )
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        local_path: str,
        volume_path: str,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        overwrite: bool = True,
        parallelism: int | str = 4,
        bandwidth_limit_bytes_per_s: float | str | None = None,
        use_presigned_urls: bool = True,
        progress_interval_s: float = 30.0,
        checkpoint_key: str = "checkpoint",
        transfer_retry: RetryPolicy | None = None,
        checkpoint_interval_s: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.transfer_retry = transfer_retry or RetryPolicy()
        self.local_path = local_path
        self.volume_path = volume_path
        self.databricks_conn_id = databricks_conn_id
        self.overwrite = overwrite
        self.parallelism = parallelism
        self.bandwidth_limit_bytes_per_s = bandwidth_limit_bytes_per_s
        self.use_presigned_urls = use_presigned_urls
        self.progress_interval_s = progress_interval_s
        self.checkpoint_key = checkpoint_key

    @cached_property
    def hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(self.databricks_conn_id, use_presigned_urls=self.use_presigned_urls)

    #: True when the local file is the input (upload), False when it is the output (download)
    _local_is_input: bool = True

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage inputs and outputs: the local file and the Volume file (names: see lineage.py)."""
        from airflow.providers.openlineage.extractors import OperatorLineage  # noqa: PLC0415 - optional

        local, volume = lineage.openlineage_datasets(
            self.hook.client.host, local_path=str(self.local_path), volume_path=str(self.volume_path)
        )
        if self._local_is_input:
            return OperatorLineage(inputs=[local], outputs=[volume])
        return OperatorLineage(inputs=[volume], outputs=[local])

    def on_kill(self) -> None:
        """Stop the workers within seconds; the checkpoint stays, so the next try resumes."""
        if "hook" in self.__dict__:
            self.hook.cancel()
        self._record_kill()

    def _checkpoints(self, context: Context) -> TaskCheckpointStore:
        return TaskCheckpointStore(context, self.checkpoint_key)

    def _fail_fast(self, err: Exception) -> None:
        fail_fast(err)


@_documents_common_params
class LocalFilesystemToDatabricksVolumeOperator(_FilesTransferOperator):
    """Upload a local file to a Unity Catalog Volume: single-shot when small, parallel multipart when large.

    :param local_path: file to upload (templated).
    :param volume_path: destination, ``/Volumes/<catalog>/<schema>/<volume>/...`` (templated).
    :param part_size_bytes: multipart part size; default 16 MiB, raised as needed to stay within
        10,000 parts. Frozen in the checkpoint for the life of an upload.
    :param multipart_threshold_bytes: files of at least this size go multipart (templated); smaller
        ones are sent in one PUT.
    :param verify_sha256: keep a SHA-256 per finished part, so a retry re-checks the bytes of resumed parts
        (catches a source rewritten without a size or mtime change).
    :param compute_sha256: report the SHA-256 of the whole file in the result.

    A source that changes during or between tries fails the task without retries (``SourceChangedError``).
    """

    template_fields: Sequence[str] = (
        *_FilesTransferOperator.template_fields,
        "part_size_bytes",
        "multipart_threshold_bytes",
    )

    def __init__(
        self,
        *,
        part_size_bytes: int | str | None = None,
        multipart_threshold_bytes: int | str = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        verify_sha256: bool = False,
        compute_sha256: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.part_size_bytes = part_size_bytes
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.verify_sha256 = verify_sha256
        self.compute_sha256 = compute_sha256

    def execute(self, context: Context) -> dict[str, Any]:
        store = self._checkpoints(context)
        checkpoint, discarded = store.load_upload()
        if discarded:
            self.log.warning("Ignoring the stored checkpoint (%s); uploading from the start", discarded)
        elif checkpoint is not None:
            self.log.info(
                "Found a checkpoint: %d of %d parts already uploaded by an earlier try",
                len(checkpoint.parts),
                checkpoint.part_count,
            )
        recorder = self._start_recording(
            context,
            self.checkpoint_key,
            kind=UploadCheckpoint.kind,
            source=self.local_path,
            destination=self.volume_path,
            unit="part",
            parallelism=self.parallelism,
            checkpoint=checkpoint,
            discarded=discarded,
        )
        with recording(recorder):
            result = self._upload(store, checkpoint, recorder.subscriber())
        out = result.to_dict()
        store.finish(UploadCheckpoint.kind, out, recorder.end_try(result=out))
        self.log.info(
            "Uploaded %s to %s: %d bytes, %d parts (%d resumed), %.1f MiB/s, sha256 %s",
            self.local_path,
            self.volume_path,
            result.bytes,
            result.parts,
            result.parts_resumed,
            result.mib_per_s,
            result.sha256,
        )
        return out

    def _upload(
        self, store: TaskCheckpointStore, checkpoint: UploadCheckpoint | None, subscriber: Subscriber
    ) -> UploadResult:
        part_size = opt_float(self.part_size_bytes, "part_size_bytes")
        options = UploadOptions(
            part_size_bytes=int(part_size) if part_size else None,
            parallelism=as_int(self.parallelism, "parallelism"),
            multipart_threshold_bytes=as_int(self.multipart_threshold_bytes, "multipart_threshold_bytes"),
            overwrite=self.overwrite,
            verify_sha256=self.verify_sha256,
            full_sha256=self.compute_sha256,
            bandwidth_limit_bytes_per_s=opt_float(
                self.bandwidth_limit_bytes_per_s, "bandwidth_limit_bytes_per_s"
            ),
            progress_interval_s=self.progress_interval_s,
            checkpoint_interval_s=self.checkpoint_interval_s,
            retry=self.transfer_retry,
        )
        try:
            return self.hook.upload_file(
                self.local_path,
                self.volume_path,
                options=options,
                checkpoint=checkpoint,
                sink=store,
                subscribers=[subscriber],
            )
        except Exception as err:
            self._fail_fast(err)
            raise


@_documents_common_params
class DatabricksVolumeToLocalFilesystemOperator(_FilesTransferOperator):
    """Download a file from a Unity Catalog Volume with parallel ranged GETs, resumable and verified.

    The file is written to a hidden temp file beside ``local_path`` and renamed into place only when
    complete and verified, so a failed or killed try never leaves a half-written file at ``local_path``.

    :param volume_path: the file to download (templated).
    :param local_path: destination file (templated); its folder must exist.
    :param chunk_size_bytes: size of each ranged GET (default 32 MiB) (templated).
    :param compute_sha256: report the SHA-256 of the downloaded bytes in the result.
    :param expected_sha256: fail (and discard) if the downloaded bytes have another SHA-256 (templated).
    :param offset: first byte to download; with ``length``, a partial download (templated).
    :param length: number of bytes from ``offset``; None means to the end of the file (templated).
    :param fsync: flush the file to disk before it is renamed into place (survives a host crash).
    :param direct_io: write with ``O_DIRECT`` past the page cache (None, the default: on a local ext4
        or xfs disk, where it saves most of the CPU of a download); False keeps the finished file in
        the page cache for a task that reads it next on the same worker.
    """

    _local_is_input = False
    template_fields: Sequence[str] = (
        *_FilesTransferOperator.template_fields,
        "chunk_size_bytes",
        "expected_sha256",
        "offset",
        "length",
    )

    def __init__(
        self,
        *,
        chunk_size_bytes: int | str = 32 * 1024 * 1024,
        compute_sha256: bool = True,
        expected_sha256: str | None = None,
        offset: int | str = 0,
        length: int | str | None = None,
        fsync: bool = False,
        direct_io: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk_size_bytes = chunk_size_bytes
        self.compute_sha256 = compute_sha256
        self.expected_sha256 = expected_sha256
        self.offset = offset
        self.length = length
        self.fsync = fsync
        self.direct_io = direct_io

    def execute(self, context: Context) -> dict[str, Any]:
        store = self._checkpoints(context)
        checkpoint, discarded = store.load_download()
        if discarded:
            self.log.warning("Ignoring the stored checkpoint (%s); downloading from the start", discarded)
        elif checkpoint is not None:
            self.log.info(
                "Found a checkpoint: %d of %d chunks already downloaded by an earlier try",
                len(checkpoint.done_chunks),
                checkpoint.chunk_count,
            )
        recorder = self._start_recording(
            context,
            self.checkpoint_key,
            kind=DownloadCheckpoint.kind,
            source=self.volume_path,
            destination=self.local_path,
            unit="chunk",
            parallelism=self.parallelism,
            checkpoint=checkpoint,
            discarded=discarded,
        )
        with recording(recorder):
            result = self._download(store, checkpoint, recorder.subscriber())
        out = result.to_dict()
        store.finish(DownloadCheckpoint.kind, out, recorder.end_try(result=out))
        self.log.info(
            "Downloaded %s to %s: %d bytes, %d chunks (%d resumed), %.1f MiB/s, sha256 %s",
            self.volume_path,
            self.local_path,
            result.bytes,
            result.chunks,
            result.chunks_resumed,
            result.mib_per_s,
            result.sha256,
        )
        return out

    def _download(
        self, store: TaskCheckpointStore, checkpoint: DownloadCheckpoint | None, subscriber: Subscriber
    ) -> DownloadResult:
        expected_sha256 = opt_str(self.expected_sha256)
        expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        options = DownloadOptions(
            chunk_size_bytes=as_int(self.chunk_size_bytes, "chunk_size_bytes"),
            parallelism=as_int(self.parallelism, "parallelism"),
            overwrite=self.overwrite,
            compute_sha256=self.compute_sha256 or expected_sha256 is not None,
            expected_sha256=expected_sha256,
            offset=as_int(self.offset, "offset"),
            length=opt_int(self.length, "length"),
            bandwidth_limit_bytes_per_s=opt_float(
                self.bandwidth_limit_bytes_per_s, "bandwidth_limit_bytes_per_s"
            ),
            progress_interval_s=self.progress_interval_s,
            fsync=self.fsync,
            direct_io=self.direct_io,
            checkpoint_interval_s=self.checkpoint_interval_s,
            retry=self.transfer_retry,
        )
        try:
            return self.hook.download_file(
                self.volume_path,
                self.local_path,
                options=options,
                checkpoint=checkpoint,
                sink=store,
                subscribers=[subscriber],
            )
        except Exception as err:
            self._fail_fast(err)
            raise
