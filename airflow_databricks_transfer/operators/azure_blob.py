"""Azure Blob Storage transfers that resume on retry: to and from a local disk, and to and from a
Unity Catalog Volume with no local copy.

Each finished range, block or part is checkpointed to the task state store, so when Airflow retries the
task (even on another worker) the new try sends only what the failed one had not finished. Blob <->
Volume copies stream ranges of one side into parts of the other: memory stays at about parallelism x
part size, and one checkpoint covers both sides.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.engine.download import DownloadOptions, DownloadResult
from airflow_databricks_transfer.engine.progress import Subscriber
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.upload import UploadOptions, UploadResult
from airflow_databricks_transfer.engine.verify import resolve_verifiers
from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook
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

_COMMON_PARAMS = """
    :param container_name: the blob container (templated).
    :param blob_name: the blob's name in the container (templated).
    :param wasb_conn_id: the Airflow connection (type ``wasb``, as the official Azure provider reads it)
        (templated).
    :param parallelism: concurrent workers (templated); memory is about parallelism x part/chunk size.
    :param bandwidth_limit_bytes_per_s: token-bucket limit shared by all workers; None or 0 means no
        limit (templated).
    :param progress_interval_s: seconds between progress lines (percent, MiB/s, ETA) in the task log.
    :param checkpoint_key: task state store key of the checkpoint.
    :param transfer_retry: per-request backoff inside one try; Airflow's ``retries`` then re-run the
        task, which resumes from its checkpoint.
    :param checkpoint_interval_s: least time between two checkpoint writes (the final state is always
        written).
"""


class _AzureTransferOperator(RecordsTries, BaseOperator):
    template_fields: Sequence[str] = (
        "container_name",
        "blob_name",
        "wasb_conn_id",
        "parallelism",
        "bandwidth_limit_bytes_per_s",
    )
    ui_color = "#e3f2fd"
    #: checkpoint kind this operator writes and resumes (a checkpoint of another kind is discarded)
    kind: str = ""
    #: what one checkpointed unit is, for the UI record: chunk (downloads), block or part
    unit: str = "part"

    def __init__(
        self,
        *,
        container_name: str,
        blob_name: str,
        wasb_conn_id: str = AzureBlobTransferHook.default_conn_name,
        parallelism: int | str = 4,
        bandwidth_limit_bytes_per_s: float | str | None = None,
        progress_interval_s: float = 30.0,
        checkpoint_key: str = "checkpoint",
        transfer_retry: RetryPolicy | None = None,
        checkpoint_interval_s: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.container_name = container_name
        self.blob_name = blob_name
        self.wasb_conn_id = wasb_conn_id
        self.parallelism = parallelism
        self.bandwidth_limit_bytes_per_s = bandwidth_limit_bytes_per_s
        self.progress_interval_s = progress_interval_s
        self.checkpoint_key = checkpoint_key
        self.transfer_retry = transfer_retry or RetryPolicy()
        self.checkpoint_interval_s = checkpoint_interval_s

    @cached_property
    def hook(self) -> AzureBlobTransferHook:
        return AzureBlobTransferHook(self.wasb_conn_id)

    def on_kill(self) -> None:
        """Stop the workers within seconds; the checkpoint stays, so the next try resumes."""
        if "hook" in self.__dict__:
            self.hook.cancel()
        self._record_kill()

    def _blob(self) -> str:
        """The blob as the UI shows it: ``container/blob``."""
        return f"{self.container_name}/{self.blob_name}"

    def _store(self, context: Context) -> TaskCheckpointStore:
        return TaskCheckpointStore(context, self.checkpoint_key)

    def _bandwidth(self) -> float | None:
        return opt_float(self.bandwidth_limit_bytes_per_s, "bandwidth_limit_bytes_per_s")

    def _upload_options(
        self, part_size: Any, threshold: int, overwrite: bool, full_sha256: bool
    ) -> UploadOptions:
        size = opt_int(part_size, "part_size_bytes")
        return UploadOptions(
            part_size_bytes=size,
            parallelism=as_int(self.parallelism, "parallelism"),
            multipart_threshold_bytes=threshold,
            overwrite=overwrite,
            full_sha256=full_sha256,
            bandwidth_limit_bytes_per_s=self._bandwidth(),
            progress_interval_s=self.progress_interval_s,
            checkpoint_interval_s=self.checkpoint_interval_s,
            retry=self.transfer_retry,
        )

    def _resume_upload(self, store: TaskCheckpointStore) -> tuple[Any, str | None]:
        checkpoint, discarded = store.load_upload(self.kind)
        if discarded:
            self.log.warning("Ignoring the stored checkpoint (%s); starting from the beginning", discarded)
        elif checkpoint is not None:
            self.log.info(
                "Found a checkpoint: %d of %d parts already sent by an earlier try",
                len(checkpoint.parts),
                checkpoint.part_count,
            )
        return checkpoint, discarded

    def _transfer(
        self,
        context: Context,
        store: TaskCheckpointStore,
        run: Callable[[list[Subscriber]], UploadResult | DownloadResult],
        *,
        source: str,
        destination: str,
        checkpoint: Any,
        discarded: str | None,
    ) -> dict[str, Any]:
        """Run it, recording the try for the UI; an error no retry can fix fails the task at once;
        success deletes the checkpoint and the UI record (their summary goes to XCom)."""
        recorder = self._start_recording(
            context,
            self.checkpoint_key,
            kind=self.kind,
            source=source,
            destination=destination,
            unit=self.unit,
            parallelism=self.parallelism,
            checkpoint=checkpoint,
            discarded=discarded,
        )
        with recording(recorder):
            try:
                result = run([recorder.subscriber()])
            except Exception as err:
                fail_fast(err)
                raise
        out = result.to_dict()
        store.finish(self.kind, out, recorder.end_try(result=out))
        return out


def _documented(cls: type[_AzureTransferOperator]) -> type[_AzureTransferOperator]:
    cls.__doc__ = f"{(cls.__doc__ or '').rstrip()}\n{_COMMON_PARAMS}"
    return cls


@_documented
class AzureBlobToLocalFilesystemOperator(_AzureTransferOperator):
    """Download a blob with parallel ranged GETs pinned to its ETag, verified, resumable across tries.

    The blob is written to a hidden partial file beside ``local_path`` and renamed into place only when
    complete and verified: size always, the blob's Content-MD5 when it has one, then the format
    verifiers. A failed verification deletes the partial and fails the task without retries.

    :param local_path: destination file (templated); its folder must exist.
    :param chunk_size_bytes: range size; None picks it from the blob's size (one range up to 8 MiB,
        8 MiB ranges up to 8 GiB, 32 MiB above) (templated).
    :param verify: format verifiers: "auto" (by extension: ``.pt``/``.pth`` a PyTorch zip,
        ``.safetensors`` its header), "none", names ("zip", "pytorch", "safetensors", comma-separated)
        or callables ``f(path, size)`` raising on a bad file (templated).
    :param resume: resume from an earlier try's checkpoint (default True); False starts clean.
    :param delete_existing: replace a file already at ``local_path`` (default True); False keeps it and
        skips the download (a cache).
    :param expected_sha256: fail (and discard) if the bytes have another SHA-256 (templated).
    :param compute_sha256: report the SHA-256 of the downloaded bytes (default True). It costs CPU, not
        wall time, except on a busy worker: a Content-MD5 check alone is about as safe against damage.
    """

    kind = "azure_blob.download"
    unit = "chunk"
    template_fields: Sequence[str] = (
        *_AzureTransferOperator.template_fields,
        "local_path",
        "chunk_size_bytes",
        "verify",
        "expected_sha256",
    )

    def __init__(
        self,
        *,
        local_path: str,
        chunk_size_bytes: int | str | None = None,
        verify: Any = "auto",
        resume: bool = True,
        delete_existing: bool = True,
        expected_sha256: str | None = None,
        compute_sha256: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.compute_sha256 = compute_sha256
        self.local_path = local_path
        self.chunk_size_bytes = chunk_size_bytes
        self.verify = verify
        self.resume = resume
        self.delete_existing = delete_existing
        self.expected_sha256 = expected_sha256
        if not (isinstance(verify, str) and "{{" in verify):
            resolve_verifiers(verify)  # a misspelt verifier fails when the DAG is parsed, not at run time

    def execute(self, context: Context) -> dict[str, Any]:
        local_path = str(self.local_path)
        if not self.delete_existing and os.path.exists(local_path):
            self.log.info("%s exists and delete_existing is off: keeping it, nothing downloaded", local_path)
            return {"destination": local_path, "skipped": True, "bytes": os.path.getsize(local_path)}
        store = self._store(context)
        checkpoint, discarded = store.load_download(self.kind) if self.resume else (None, None)
        if not self.resume:
            store.clear()
        if discarded:
            self.log.warning("Ignoring the stored checkpoint (%s); downloading from the start", discarded)
        expected = opt_str(self.expected_sha256)
        return self._transfer(
            context,
            store,
            lambda subscribers: self._download(local_path, expected, checkpoint, store, subscribers),
            source=self._blob(),
            destination=local_path,
            checkpoint=checkpoint,
            discarded=discarded,
        )

    def _download(
        self,
        local_path: str,
        expected: str | None,
        checkpoint: Any,
        store: TaskCheckpointStore,
        subscribers: list[Subscriber],
    ) -> DownloadResult:
        options = DownloadOptions(
            parallelism=as_int(self.parallelism, "parallelism"),
            overwrite=True,
            compute_sha256=self.compute_sha256 or bool(expected),
            expected_sha256=expected.lower() if expected else None,
            bandwidth_limit_bytes_per_s=self._bandwidth(),
            progress_interval_s=self.progress_interval_s,
            checkpoint_interval_s=self.checkpoint_interval_s,
            retry=self.transfer_retry,
            verifiers=tuple(resolve_verifiers(self.verify)),
        )
        return self.hook.download_file(
            str(self.container_name),
            str(self.blob_name),
            local_path,
            chunk_size_bytes=opt_int(self.chunk_size_bytes, "chunk_size_bytes"),
            options=options,
            checkpoint=checkpoint,
            sink=store,
            subscribers=subscribers,
        )


@_documented
class LocalFilesystemToAzureBlobOperator(_AzureTransferOperator):
    """Upload a local file as staged blocks (parallel, each with Content-MD5) committed as one block
    list with the whole file's Content-MD5; a retry asks the service which blocks it holds and stages
    only the missing ones.

    :param local_path: the file to upload (templated).
    :param block_size_bytes: block size; default 8 MiB, raised to stay within 50,000 blocks (templated).
    :param single_put_threshold_bytes: files below this go in one Put Blob (default 16 MiB).
    :param overwrite: replace an existing blob (default True); False fails if it exists.
    :param create_container: create the container when it does not exist.
    """

    kind = "azure_blob.upload"
    unit = "block"
    template_fields: Sequence[str] = (
        *_AzureTransferOperator.template_fields,
        "local_path",
        "block_size_bytes",
    )

    def __init__(
        self,
        *,
        local_path: str,
        block_size_bytes: int | str | None = None,
        single_put_threshold_bytes: int = 16 * 1024 * 1024,
        overwrite: bool = True,
        create_container: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.local_path = local_path
        self.block_size_bytes = block_size_bytes
        self.single_put_threshold_bytes = single_put_threshold_bytes
        self.overwrite = overwrite
        self.create_container = create_container

    def execute(self, context: Context) -> dict[str, Any]:
        store = self._store(context)
        checkpoint, discarded = self._resume_upload(store)
        return self._transfer(
            context,
            store,
            lambda subscribers: self.hook.upload_file(
                str(self.local_path),
                str(self.container_name),
                str(self.blob_name),
                options=self._upload_options(
                    self.block_size_bytes, self.single_put_threshold_bytes, self.overwrite, full_sha256=True
                ),
                checkpoint=checkpoint,
                sink=store,
                create_container=self.create_container,
                subscribers=subscribers,
            ),
            source=str(self.local_path),
            destination=self._blob(),
            checkpoint=checkpoint,
            discarded=discarded,
        )


class _VolumeSideOperator(_AzureTransferOperator):
    template_fields: Sequence[str] = (
        *_AzureTransferOperator.template_fields,
        "volume_path",
        "databricks_conn_id",
        "part_size_bytes",
    )

    def __init__(
        self,
        *,
        volume_path: str,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        part_size_bytes: int | str | None = None,
        overwrite: bool = True,
        use_presigned_urls: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.volume_path = volume_path
        self.databricks_conn_id = databricks_conn_id
        self.part_size_bytes = part_size_bytes
        self.overwrite = overwrite
        self.use_presigned_urls = use_presigned_urls

    @cached_property
    def files_hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(str(self.databricks_conn_id), use_presigned_urls=self.use_presigned_urls)


_VOLUME_PARAMS = """
    :param volume_path: the Volume file, ``/Volumes/<catalog>/<schema>/<volume>/...`` (templated).
    :param databricks_conn_id: the ``databricks`` connection of the workspace (templated).
    :param part_size_bytes: part size of the copy (templated); memory is about parallelism x part size.
    :param overwrite: replace an existing destination (default True).
    :param use_presigned_urls: move Volume data through presigned URLs when the workspace offers them.
"""


@_documented
class AzureBlobToDatabricksVolumeOperator(_VolumeSideOperator):
    """Copy a blob into a Unity Catalog Volume with no local copy: ranges of the blob, pinned to its
    ETag, become Files API multipart parts; a retry resumes the parts already in the Volume session."""

    kind = "azure_blob.to_volume"
    __doc__ = f"{__doc__}{_VOLUME_PARAMS}"

    def execute(self, context: Context) -> dict[str, Any]:
        store = self._store(context)
        checkpoint, discarded = self._resume_upload(store)
        return self._transfer(
            context,
            store,
            lambda subscribers: self.hook.copy_blob_to_volume(
                str(self.container_name),
                str(self.blob_name),
                self.files_hook,
                str(self.volume_path),
                options=self._upload_options(self.part_size_bytes, 1, self.overwrite, full_sha256=False),
                checkpoint=checkpoint,
                sink=store,
                subscribers=subscribers,
            ),
            source=self._blob(),
            destination=str(self.volume_path),
            checkpoint=checkpoint,
            discarded=discarded,
        )

    def on_kill(self) -> None:
        super().on_kill()
        if "files_hook" in self.__dict__:
            self.files_hook.cancel()


@_documented
class DatabricksVolumeToAzureBlobOperator(_VolumeSideOperator):
    """Copy a Unity Catalog Volume file into a blob with no local copy: ranges of the file become
    staged blocks; a retry asks the service which blocks it holds and stages only the missing ones."""

    kind = "volume.to_azure_blob"
    unit = "block"
    __doc__ = f"{__doc__}{_VOLUME_PARAMS}"

    def execute(self, context: Context) -> dict[str, Any]:
        store = self._store(context)
        checkpoint, discarded = self._resume_upload(store)
        return self._transfer(
            context,
            store,
            lambda subscribers: self.hook.copy_volume_to_blob(
                self.files_hook,
                str(self.volume_path),
                str(self.container_name),
                str(self.blob_name),
                options=self._upload_options(self.part_size_bytes, 1, self.overwrite, full_sha256=False),
                checkpoint=checkpoint,
                sink=store,
                subscribers=subscribers,
            ),
            source=str(self.volume_path),
            destination=self._blob(),
            checkpoint=checkpoint,
            discarded=discarded,
        )
