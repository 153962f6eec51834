"""One-way sync of a local folder into a Unity Catalog Volume folder, sending only new and changed files.

Change detection is by SHA-256 against a manifest the sync keeps in the Volume (Volumes keep no content
hash), with a hash cache on the worker so an unchanged tree is not read again. A retried sync skips what
the manifest already records and resumes a half-sent large file from its checkpoint in the task state
store. To spread one sync over several workers, a plan task splits the changed files into batches
balanced by bytes, a mapped sync task uploads each batch, and a merge task folds their records into
the manifest (see ``dags/databricks_volume_sync.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from airflow_databricks_transfer.checkpoints import XCOM_KEY, TaskFileCheckpoints, push_xcom
from airflow_databricks_transfer.clients.volume_tree import FilesApiVolumeTree
from airflow_databricks_transfer.engine.localstate import default_state_dir
from airflow_databricks_transfer.engine.planning import DEFAULT_MULTIPART_THRESHOLD_BYTES
from airflow_databricks_transfer.engine.progress import ProgressEvent, Subscriber, log_progress
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.sync import (
    SyncOptions,
    SyncResult,
    VolumeSync,
    describe,
    merge_fragments,
)
from airflow_databricks_transfer.engine.tree import HashCache
from airflow_databricks_transfer.engine.upload import UploadOptions
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from airflow_databricks_transfer.operators._common import (
    RecordsTries,
    as_bool,
    as_float,
    as_int,
    as_patterns,
    fail_fast,
    opt_float,
)
from airflow_databricks_transfer.ui_record import recording

MiB = 1024 * 1024
#: failures listed one per line in the task log (all of them are in the XCom result, up to its cap)
_LOGGED_FAILURES = 50


class DatabricksVolumeSyncOperator(RecordsTries, BaseOperator):
    """Sync ``local_dir`` into the Volume folder ``volume_path`` (one way: local -> Volume).

    :param local_dir: the local folder (templated).
    :param volume_path: the target, ``/Volumes/<catalog>/<schema>/<volume>[/<folder>]`` (templated).
    :param include: glob patterns on paths relative to ``local_dir``; none means every file (templated;
        a list, or a comma-separated string from a UI Param). A pattern without ``/`` matches a name at any
        depth; ``**`` spans folders.
    :param exclude: glob patterns of files and folders to leave out (templated).
    :param naming: ``mirror`` keeps the local names; ``content`` names each copy
        ``<name>_<16 hex of its SHA-256>.<ext>``.
    :param force_upload: send every file, ignoring the manifest and the hash cache (templated).
    :param dry_run: only list what would be sent and why, and what would be deleted (templated).
    :param delete_removed: delete Volume files under ``volume_path`` that no longer exist locally
        (default off; never outside ``volume_path``) (templated).
    :param concurrency: files sent at once (default 5) (templated).
    :param parallelism: part workers of each large file (templated).
    :param memory_limit_bytes: one bound on all part buffers; large files get fewer workers to fit.
    :param part_size_bytes: multipart part size (default 16 MiB, raised to stay within 10,000 parts).
    :param multipart_threshold_bytes: files of at least this size go multipart and are checkpointed.
    :param skip_hidden: leave out names starting with ``.`` (default True).
    :param skip_temporary: leave out partial and editor temp files (default True).
    :param fail_on_error: fail the task at the end when any file failed (default True; the others land
        and are recorded, so the retry sends only the failed ones).
    :param manifest_every_files: rewrite the manifest in the Volume after this many finished files
        (default 1000) or ``manifest_every_s`` seconds (default 30), whichever comes first (templated).
        What a killed try finished but had not yet recorded is sent again by the retry; smaller values
        shrink that window at the cost of one manifest PUT (and one folder listing) per batch.
    :param manifest_every_s: see ``manifest_every_files`` (templated).
    :param bandwidth_limit_bytes_per_s: pace each file's upload to this rate (templated; 0 or empty:
        no limit).
    :param hash_cache_path: the worker's SQLite hash cache (default: the state folder of this package,
        ``$XDG_STATE_HOME/airflow-databricks-transfer/sync-hash-cache.sqlite``).
    :param files: sync only these relative paths (a mapped batch from
        ``DatabricksVolumeSyncPlanOperator``); its records go to a manifest fragment (templated).
    :param databricks_conn_id: the Airflow connection (type ``databricks``) (templated).
    """

    template_fields: Sequence[str] = (
        "local_dir",
        "volume_path",
        "include",
        "exclude",
        "naming",
        "force_upload",
        "sync_dry_run",
        "delete_removed",
        "concurrency",
        "parallelism",
        "manifest_every_files",
        "manifest_every_s",
        "bandwidth_limit_bytes_per_s",
        "files",
        "databricks_conn_id",
    )
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        local_dir: str,
        volume_path: str,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        naming: str = "mirror",
        force_upload: bool | str = False,
        dry_run: bool | str = False,
        delete_removed: bool | str = False,
        concurrency: int | str = 5,
        parallelism: int | str = 4,
        memory_limit_bytes: int = 512 * MiB,
        part_size_bytes: int | None = None,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        skip_hidden: bool = True,
        skip_temporary: bool = True,
        fail_on_error: bool = True,
        manifest_every_files: int | str = 1000,
        manifest_every_s: float | str = 30.0,
        hash_cache_path: str | None = None,
        files: Sequence[str] | str | None = None,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        use_presigned_urls: bool = True,
        progress_interval_s: float = 30.0,
        checkpoint_key: str = "checkpoint",
        transfer_retry: RetryPolicy | None = None,
        bandwidth_limit_bytes_per_s: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.local_dir = local_dir
        self.volume_path = volume_path
        self.include = include
        self.exclude = exclude
        self.naming = naming
        self.force_upload = force_upload
        # BaseOperator has a dry_run() method: the flag is kept under another name (templated as such)
        self.sync_dry_run = dry_run
        self.delete_removed = delete_removed
        self.concurrency = concurrency
        self.parallelism = parallelism
        self.memory_limit_bytes = memory_limit_bytes
        self.part_size_bytes = part_size_bytes
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.skip_hidden = skip_hidden
        self.skip_temporary = skip_temporary
        self.fail_on_error = fail_on_error
        self.manifest_every_files = manifest_every_files
        self.manifest_every_s = manifest_every_s
        self.hash_cache_path = hash_cache_path
        self.files = files
        self.databricks_conn_id = databricks_conn_id
        self.use_presigned_urls = use_presigned_urls
        self.progress_interval_s = progress_interval_s
        self.checkpoint_key = checkpoint_key
        self.transfer_retry = transfer_retry or RetryPolicy()
        self.bandwidth_limit_bytes_per_s = bandwidth_limit_bytes_per_s
        self._sync: VolumeSync | None = None
        self._mirrored: dict[str, Any] | None = None  # the last progress pushed to XCom

    @cached_property
    def hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(self.databricks_conn_id, use_presigned_urls=self.use_presigned_urls)

    def on_kill(self) -> None:
        """Stop the file workers within seconds; finished files are recorded, large ones checkpointed."""
        if self._sync is not None:
            self._sync.cancel()
        self._record_kill()

    # ------------------------------------------------------------------ building blocks
    def _options(self) -> SyncOptions:
        naming = str(self.naming).strip()
        if naming not in ("mirror", "content"):
            raise AirflowException(f"naming must be 'mirror' or 'content', got {self.naming!r}")
        try:
            return SyncOptions(
                include=as_patterns(self.include, "include"),
                exclude=as_patterns(self.exclude, "exclude"),
                skip_hidden=self.skip_hidden,
                skip_temporary=self.skip_temporary,
                naming=naming,  # type: ignore[arg-type]  # checked above
                force_upload=as_bool(self.force_upload, "force_upload"),
                delete_removed=as_bool(self.delete_removed, "delete_removed"),
                concurrency=as_int(self.concurrency, "concurrency"),
                memory_limit_bytes=self.memory_limit_bytes,
                progress_interval_s=self.progress_interval_s,
                manifest_every_files=as_int(self.manifest_every_files, "manifest_every_files"),
                manifest_every_s=as_float(self.manifest_every_s, "manifest_every_s"),
                upload=UploadOptions(
                    part_size_bytes=self.part_size_bytes,
                    parallelism=as_int(self.parallelism, "parallelism"),
                    multipart_threshold_bytes=self.multipart_threshold_bytes,
                    bandwidth_limit_bytes_per_s=opt_float(
                        self.bandwidth_limit_bytes_per_s, "bandwidth_limit_bytes_per_s"
                    ),
                    retry=self.transfer_retry,
                    progress_interval_s=3600.0,
                ),
            )
        except ValueError as err:
            fail_fast(err)
            raise

    def _hash_cache(self) -> HashCache:
        return HashCache(self.hash_cache_path or default_state_dir() / "sync-hash-cache.sqlite")

    def _batch(self) -> list[str] | None:
        if self.files is None:
            return None
        return list(as_patterns(self.files, "files"))

    def _fragment(self, context: Context) -> str | None:
        """A mapped batch writes a fragment named after its task instance (never two the same)."""
        if self.files is None:
            return None
        ti = context["ti"]
        raw = f"{ti.dag_id}-{ti.run_id}-{ti.task_id}-{getattr(ti, 'map_index', -1)}"
        return "f" + re.sub(r"[^A-Za-z0-9_.-]", "_", raw)

    def _progress_mirror(self, context: Context) -> Any:
        ti = context.get("ti")

        def push(event: ProgressEvent) -> None:
            if ti is not None:
                self._mirrored = {
                    "kind": "volume_sync",
                    "phase": "done" if event.final else "uploading",
                    "files_done": event.parts_done,
                    "files_total": event.parts_total,
                    "bytes_done": event.bytes_done,
                    "bytes_resumed": event.bytes_resumed,
                    "bytes_total": event.bytes_total,
                    "percent": round(event.percent, 1),
                }
                push_xcom(ti, XCOM_KEY, self._mirrored)

        return push

    def _build(self, context: Context, options: SyncOptions, extra: Sequence[Subscriber] = ()) -> VolumeSync:
        return VolumeSync(
            FilesApiVolumeTree(self.hook.client),
            str(self.local_dir),
            str(self.volume_path),
            options,
            hash_cache=self._hash_cache(),
            checkpoints=TaskFileCheckpoints(context, self.checkpoint_key),
            subscribers=[log_progress(self.log), self._progress_mirror(context), *extra],
            fragment=self._fragment(context),
            only=self._batch(),
        )

    # ------------------------------------------------------------------ run
    def execute(self, context: Context) -> dict[str, Any]:
        recorder = self._start_recording(
            context,
            self.checkpoint_key,
            kind="volume_sync",
            source=self.local_dir,
            destination=self.volume_path,
            unit="file",
            parallelism=self.concurrency,
            cumulative=True,
        )
        with recording(recorder):
            options = self._options()
            dry_run = as_bool(self.sync_dry_run, "dry_run")
            try:
                self._sync = self._build(context, options, [recorder.subscriber()])
                plan = self._sync.plan()
                recorder.set_totals(len(plan.uploads), sum(a.size for a in plan.uploads))
                self._log_plan(plan.uploads, plan.deletes, plan.unchanged, dry_run)
                result = self._sync.run(plan, dry_run=dry_run)
            except Exception as err:
                fail_fast(err)
                raise
            finally:
                self._sync = None
            out = self._report(result, context)
        summary = recorder.end_try(result=out)
        recorder.delete()
        ti = context.get("ti")
        if ti is not None:  # the tab of a finished sync still shows its tries (the UI record is gone)
            last = self._mirrored or {"kind": "volume_sync", "files_done": 0, "files_total": 0}
            push_xcom(ti, XCOM_KEY, {**last, "phase": "done", "percent": 100.0, **summary})
        return out

    def _log_plan(
        self, uploads: Sequence[Any], deletes: Sequence[str], unchanged: int, dry_run: bool
    ) -> None:
        verb = "Would send" if dry_run else "Sending"
        self.log.info(
            "%s %d files (%d bytes), %d unchanged, %d to delete",
            verb,
            len(uploads),
            sum(a.size for a in uploads),
            unchanged,
            len(deletes),
        )
        if dry_run or len(uploads) <= 100:
            for a in uploads[:1000]:
                self.log.info(
                    "  %s %s (%s, %d bytes)", "would send" if dry_run else "send", a.rel, a.reason, a.size
                )
        if dry_run:
            for rel in deletes[:1000]:
                self.log.info("  would delete %s", rel)

    def _report(self, result: SyncResult, context: Context) -> dict[str, Any]:
        self.log.info("%s", describe(result))
        for f in result.failures[:_LOGGED_FAILURES]:
            self.log.error("  failed: %s: %s (%s)", f.path, f.reason, f.error)
        if len(result.failures) > _LOGGED_FAILURES:
            self.log.error("  ... and %d more failures", len(result.failures) - _LOGGED_FAILURES)
        out = result.to_dict()
        if result.failed and self.fail_on_error and not result.dry_run:
            # the summary stays visible: it goes to XCom (key "sync_result") before the task fails
            ti = context.get("ti")
            if ti is not None:
                push_xcom(ti, "sync_result", out)
            raise AirflowException(
                f"{result.failed} of {result.failed + result.uploaded} files failed "
                f"(first: {result.failures[0].path}: {result.failures[0].reason}); "
                "the others are recorded, so a retry sends only what is missing"
            )
        return out


class DatabricksVolumeSyncPlanOperator(DatabricksVolumeSyncOperator):
    """The plan step of a fanned-out sync: the changed files in ``batches`` lists balanced by bytes.

    Feed its output to ``DatabricksVolumeSyncOperator.partial(...).expand(files=plan.output)`` and end
    with ``DatabricksVolumeSyncMergeOperator``. Nothing is sent here; the list is empty when nothing
    changed (the mapped task then has no instances).

    :param batches: how many batches at most (templated).
    """

    template_fields: Sequence[str] = (*DatabricksVolumeSyncOperator.template_fields, "batches")

    def __init__(self, *, batches: int | str = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches = batches

    def execute(self, context: Context) -> list[list[str]]:  # type: ignore[override]
        options = self._options()
        try:
            plan = self._build(context, options).plan()
        except Exception as err:
            fail_fast(err)
            raise
        out = plan.batches(as_int(self.batches, "batches"))
        self._log_plan(plan.uploads, [], plan.unchanged, dry_run=False)
        for i, batch in enumerate(out):
            size = sum(plan.files[r].size for r in batch)
            self.log.info("Batch %d: %d files, %d bytes", i, len(batch), size)
        return out


class DatabricksVolumeSyncMergeOperator(BaseOperator):
    """The last step of a fanned-out sync: fold the batches' manifest fragments into the manifest.

    Safe to run again; run it with ``trigger_rule="all_done"`` so what the finished batches recorded is
    kept even when one batch failed.

    :param volume_path: the sync's target folder (templated).
    """

    template_fields: Sequence[str] = ("volume_path", "databricks_conn_id")

    def __init__(
        self,
        *,
        volume_path: str,
        databricks_conn_id: str = DatabricksFilesHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.volume_path = volume_path
        self.databricks_conn_id = databricks_conn_id

    def execute(self, context: Context) -> dict[str, int]:
        hook = DatabricksFilesHook(self.databricks_conn_id)
        try:
            merged = merge_fragments(FilesApiVolumeTree(hook.client), str(self.volume_path))
        except Exception as err:
            fail_fast(err)
            raise
        self.log.info(
            "Merged %d manifest fragments; the manifest records %d files",
            merged["fragments"],
            merged["files"],
        )
        return merged
