"""Stream records into a Unity Catalog Delta table through Databricks Zerobus, resuming on retry.

Zerobus acknowledges records per stream, and its offsets restart at 0 on every stream, so they cannot be
a cursor. After each acknowledged flush the operator checkpoints the *source position* after the last
acknowledged record (a byte offset and line, a row group and row, an index) in the task state store; a
retry continues from there. Nothing acknowledged is sent again by a retry; what a dead try had sent but not
yet seen acknowledged is sent again (at-least-once), and the result reports that window.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_databricks_transfer.checkpoints import TaskCheckpointStore
from airflow_databricks_transfer.clients.zerobus import RecordType, StreamOptions, proto_converter
from airflow_databricks_transfer.engine.checkpoint import SourceIdentity
from airflow_databricks_transfer.engine.errors import FatalError, RemoteNotFoundError
from airflow_databricks_transfer.engine.ingest import IngestOptions, RecordReader, RecordsReader
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.hooks._zerobus_ingest import file_reader, format_of
from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from airflow_databricks_transfer.hooks.zerobus import ZerobusHook
from airflow_databricks_transfer.operators._common import (
    RecordsTries,
    as_int,
    fail_fast,
    opt_float,
    opt_int,
    opt_str,
)
from airflow_databricks_transfer.ui_record import recording

KIND = "zerobus.ingest"
VOLUME_PREFIX = "/Volumes/"
RECORD_TYPES = ("json", "proto")
# stream options the SDK exposes; None keeps the SDK's default
STREAM_OPTIONS = (
    "max_inflight_records",
    "recovery_timeout_ms",
    "recovery_backoff_ms",
    "recovery_retries",
    "server_lack_of_ack_timeout_ms",
    "flush_timeout_ms",
)


class ZerobusIngestOperator(RecordsTries, BaseOperator):
    """Ingest JSON Lines, CSV or Parquet (a local file or a ``/Volumes/...`` file) or a list of records
    into a Delta table through Zerobus, in batches, checkpointing the source position after every
    acknowledged flush; Airflow's retry resumes after the last acknowledged record.

    Exactly one of ``source_path``, ``records`` and ``records_callable`` is given. A Volume file is first
    downloaded (resumable, through the Files API) into a folder of the task in the worker's temp dir.

    :param table_name: the target table, ``catalog.schema.table`` (templated).
    :param source_path: a local file or a Volume file ``/Volumes/<catalog>/<schema>/<volume>/...``
        (templated).
    :param records: a list of records (dicts; or protobuf bytes with ``record_type="proto"``), e.g. an
        upstream task's XCom through templating or an XComArg (templated; a JSON rendering is parsed).
    :param records_callable: called with the task context; returns the list of records.
    :param format: ``jsonl``, ``csv`` or ``parquet``; None picks it by the file's extension (templated).
    :param record_type: ``json`` (records sent as JSON objects) or ``proto`` (serialized with
        ``proto_message``) (templated).
    :param proto_message: for ``proto``: the dotted path of a generated message class
        (``mypkg.rows_pb2.Row``), or ``<descriptor set file>:<full message name>`` for a
        ``protoc --descriptor_set_out`` file (templated).
    :param csv_delimiter: the CSV field delimiter; None: ``,`` (a tab for ``.tsv``) (templated).
    :param csv_types: CSV column -> type (``int``, ``float``, ``bool``, ``str``; ``json`` parses the
        cell); other columns stay strings, and an empty cell is null.
    :param batch_records: records per ingest call (templated).
    :param batch_bytes: bytes per ingest call at most (templated).
    :param flush_every_batches: batches between two acknowledged flushes, i.e. checkpoints (templated;
        default 100: at most 100 x ``batch_records`` records can reach the table twice after a killed
        try, and a flush every 10 batches measured 0.66-0.73x the SDK's rate against 1.00x).
        The duplicates a killed try can leave are at most the records sent since the last flush.
    :param flush_interval_s: flush at least this often, however few batches went (templated).
    :param dedupe_key: a column the operator fills with a key deterministic from the source identity and
        the record's position, so downstream can drop duplicates exactly (templated).
    :param dead_letter_path: a JSON Lines file where malformed input lines or rows go instead of failing
        the task (templated); their count is in the result.
    :param max_inflight_records: SDK stream option: submissions in flight before ``send`` blocks
        (templated; None: the SDK's default).
    :param recovery: SDK stream option: let the SDK reconnect and resend within a stream.
    :param recovery_timeout_ms: SDK stream option (templated; None: the SDK's default).
    :param recovery_backoff_ms: SDK stream option (templated; None: the SDK's default).
    :param recovery_retries: SDK stream option (templated; None: the SDK's default).
    :param server_lack_of_ack_timeout_ms: SDK stream option: a stream with no ack for this long fails
        (templated; None: the SDK's default).
    :param flush_timeout_ms: SDK stream option: the longest a flush may wait (templated; None: the SDK's
        default of 5 minutes).
    :param databricks_conn_id: the ``databricks`` connection: host = workspace URL, login/password =
        OAuth client id/secret, extra ``zerobus_endpoint`` (templated).
    :param volume_conn_id: the ``databricks`` connection that reads a ``/Volumes/...`` source; None: the
        ``databricks_conn_id`` one (templated).
    :param checkpoint_key: task state store key of the checkpoint.
    :param resume: resume from an earlier try's checkpoint (default True); False starts clean.
    :param progress_interval_s: seconds between progress lines in the task log.
    :param ingest_retry: backoff of stream reopening within one try; Airflow's ``retries`` then re-run
        the task, which resumes from its checkpoint.
    """

    template_fields: Sequence[str] = (
        "table_name",
        "source_path",
        "records",
        "format",
        "record_type",
        "proto_message",
        "csv_delimiter",
        "batch_records",
        "batch_bytes",
        "flush_every_batches",
        "flush_interval_s",
        "dedupe_key",
        "dead_letter_path",
        *STREAM_OPTIONS,
        "databricks_conn_id",
        "volume_conn_id",
    )
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        table_name: str,
        source_path: Any = None,
        records: Any = None,
        records_callable: Callable[..., Iterable[Any]] | None = None,
        format: str | None = None,
        record_type: str = "json",
        proto_message: str | None = None,
        csv_delimiter: str | None = None,
        csv_types: Mapping[str, str] | None = None,
        batch_records: int | str = 1000,
        batch_bytes: int | str = 4 * 1024 * 1024,
        flush_every_batches: int | str = 100,
        flush_interval_s: float | str = 5.0,
        dedupe_key: str | None = None,
        dead_letter_path: str | None = None,
        max_inflight_records: int | str | None = None,
        recovery: bool = True,
        recovery_timeout_ms: int | str | None = None,
        recovery_backoff_ms: int | str | None = None,
        recovery_retries: int | str | None = None,
        server_lack_of_ack_timeout_ms: int | str | None = None,
        flush_timeout_ms: int | str | None = None,
        databricks_conn_id: str = "databricks_default",
        volume_conn_id: str | None = None,
        checkpoint_key: str = "checkpoint",
        resume: bool = True,
        progress_interval_s: float = 30.0,
        ingest_retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [x is not None for x in (source_path, records, records_callable)]
        if sum(given) != 1:
            raise ValueError("give exactly one of source_path, records and records_callable")
        if isinstance(record_type, str) and "{{" not in record_type and record_type not in RECORD_TYPES:
            raise ValueError(f"record_type must be one of {RECORD_TYPES}, got {record_type!r}")
        if record_type == "proto" and not proto_message:
            raise ValueError('record_type="proto" needs proto_message')
        self.table_name = table_name
        self.source_path = source_path
        self.records = records
        self.records_callable = records_callable
        self.format = format
        self.record_type = record_type
        self.proto_message = proto_message
        self.csv_delimiter = csv_delimiter
        self.csv_types = dict(csv_types) if csv_types else None
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.flush_every_batches = flush_every_batches
        self.flush_interval_s = flush_interval_s
        self.dedupe_key = dedupe_key
        self.dead_letter_path = dead_letter_path
        self.max_inflight_records = max_inflight_records
        self.recovery = recovery
        self.recovery_timeout_ms = recovery_timeout_ms
        self.recovery_backoff_ms = recovery_backoff_ms
        self.recovery_retries = recovery_retries
        self.server_lack_of_ack_timeout_ms = server_lack_of_ack_timeout_ms
        self.flush_timeout_ms = flush_timeout_ms
        self.databricks_conn_id = databricks_conn_id
        self.volume_conn_id = volume_conn_id
        self.checkpoint_key = checkpoint_key
        self.resume = resume
        self.progress_interval_s = progress_interval_s
        self.ingest_retry = ingest_retry or RetryPolicy()

    # ------------------------------------------------------------------ hooks (built in the task process)
    @cached_property
    def hook(self) -> ZerobusHook:
        return ZerobusHook(str(self.databricks_conn_id))

    @cached_property
    def files_hook(self) -> DatabricksFilesHook:
        return DatabricksFilesHook(str(self.volume_conn_id or self.databricks_conn_id))

    def on_kill(self) -> None:
        """Stop within seconds; the checkpoint stays, so the next try resumes after the last ack."""
        for name in ("hook", "files_hook"):
            if name in self.__dict__:
                self.__dict__[name].cancel()
        self._record_kill()

    # ------------------------------------------------------------------ execute
    def execute(self, context: Context) -> dict[str, Any]:
        store = TaskCheckpointStore(context, self.checkpoint_key)
        checkpoint, discarded = None, None
        if self.resume:
            checkpoint, discarded = store.load_ingest(KIND)
            if discarded:
                self.log.warning("Ignoring the stored checkpoint (%s); ingesting from the start", discarded)
            elif checkpoint is not None:
                self.log.info(
                    "Found a checkpoint: %d records already acknowledged, resuming at %s",
                    checkpoint.records_acked,
                    checkpoint.position,
                )
        else:
            store.clear()
        recorder = self._start_recording(
            context,
            self.checkpoint_key,
            kind=KIND,
            source=self.source_path if self.source_path is not None else "records",
            destination=self.table_name,
            unit="batch",
            checkpoint=checkpoint,
            discarded=discarded,
        )
        work: Path | None = None
        with recording(recorder):
            try:
                reader, source, work = self._reader(context)
                result = self.hook.ingest(
                    reader,
                    str(self.table_name),
                    options=self._options(),
                    checkpoint=checkpoint,
                    sink=store,
                    source=source,
                    record_type=self._record_type(),
                    descriptor=self._descriptor(),
                    convert=self._converter(),
                    stream_options=self._stream_options(),
                    subscribers=[recorder.subscriber()],
                )
            except Exception as err:
                fail_fast(err)
                if isinstance(err, FatalError):  # bad input, schema mismatch: no retry can fix it
                    raise AirflowFailException(f"{type(err).__name__}: {err}") from err
                raise
        out = result.to_dict()
        store.finish(KIND, out, recorder.end_try(result=out))
        if work is not None:  # the Volume file's local copy: only a retry would have needed it
            shutil.rmtree(work, ignore_errors=True)
        return out

    # ------------------------------------------------------------------ options
    def _record_type(self) -> RecordType:
        kind = str(self.record_type).strip().lower()
        if kind == "json":
            return "json"
        if kind == "proto":
            return "proto"
        raise AirflowFailException(f"record_type must be one of {RECORD_TYPES}, got {kind!r}")

    def _options(self) -> IngestOptions:
        return IngestOptions(
            batch_records=as_int(self.batch_records, "batch_records"),
            batch_bytes=as_int(self.batch_bytes, "batch_bytes"),
            flush_every_batches=as_int(self.flush_every_batches, "flush_every_batches"),
            flush_interval_s=opt_float(self.flush_interval_s, "flush_interval_s") or 0.0,
            dedupe_key=opt_str(self.dedupe_key),
            dead_letter_path=opt_str(self.dead_letter_path),
            retry=self.ingest_retry,
            progress_interval_s=self.progress_interval_s,
        )

    def _stream_options(self) -> StreamOptions:
        given = {name: opt_int(getattr(self, name), name) for name in STREAM_OPTIONS}
        return StreamOptions(recovery=self.recovery, **{k: v for k, v in given.items() if v is not None})

    # ------------------------------------------------------------------ protobuf
    @cached_property
    def _proto_class(self) -> Any:
        return load_proto_message(str(self.proto_message))

    def _descriptor(self) -> Any:
        return self._proto_class if self._record_type() == "proto" else None

    def _converter(self) -> Callable[[Any], Any] | None:
        if self._record_type() != "proto":
            return None
        to_proto = proto_converter(self._proto_class)

        def convert(record: Any) -> Any:
            return record if isinstance(record, bytes) else to_proto(record)  # bytes are serialized already

        return convert

    # ------------------------------------------------------------------ sources
    def _reader(self, context: Context) -> tuple[RecordReader, SourceIdentity | None, Path | None]:
        """(reader, source identity or None for the reader's own, the task's work folder to delete)."""
        if self.source_path is None:
            return RecordsReader(self._records(context)), None, None
        path = str(self.source_path)
        fmt = opt_str(self.format)
        try:
            if not path.startswith(VOLUME_PREFIX):
                return self._file_reader(path, fmt), None, None
            local, source, work = self._fetch_volume_file(context, path)
            # messages and dead letters name the Volume file, not its temp copy
            return self._file_reader(str(local), fmt or format_of(path), uri=path), source, work
        except ValueError as err:  # an unknown format or CSV type: no retry can fix it
            raise AirflowFailException(str(err)) from err

    def _file_reader(self, path: str, fmt: str | None, uri: str | None = None) -> RecordReader:
        return file_reader(
            path,
            fmt,
            uri=uri,
            csv_delimiter=opt_str(self.csv_delimiter),
            csv_types=self.csv_types,
            lines_as_text=self._sends_lines_as_text(),
        )

    def _sends_lines_as_text(self) -> bool:
        """A JSON stream without a dedupe key sends JSON Lines as they are (a dedupe key adds a field)."""
        return str(self.record_type).strip().lower() == "json" and opt_str(self.dedupe_key) is None

    def _records(self, context: Context) -> list[Any]:
        if self.records_callable is not None:
            return list(self.records_callable(context))
        records = self.records
        if isinstance(records, str):  # a template rendered as text: JSON, or a Python literal
            try:
                records = json.loads(records)
            except ValueError:
                try:
                    records = ast.literal_eval(records)
                except (ValueError, SyntaxError):
                    raise AirflowFailException("records rendered to text that is not a list") from None
        if not isinstance(records, list | tuple):
            raise AirflowFailException(f"records must be a list, got {type(records).__name__}")
        return list(records)

    def _fetch_volume_file(self, context: Context, volume_path: str) -> tuple[Path, Any, Path]:
        """Download a Volume file into this task's folder of the worker's temp dir, resumably.

        The ingest checkpoint names the Volume file (path, size, ETag or Last-Modified), not the copy,
        so a retry on another worker downloads again and still resumes the ingest where it stopped.
        """
        meta = self.files_hook.get_metadata(volume_path)
        if meta is None:
            raise RemoteNotFoundError(f"{volume_path} does not exist")
        version = meta.get("etag") or meta.get("last_modified") or ""
        work = task_work_dir(context, volume_path)
        local = work / Path(volume_path).name
        marker = work / ".source.json"
        size = int(meta["size"])
        stamp = {"path": volume_path, "size": size, "version": version}
        have = json.loads(marker.read_text()) if marker.is_file() else None
        if have != stamp or not local.is_file() or local.stat().st_size != size:
            marker.unlink(missing_ok=True)
            downloads = TaskCheckpointStore(context, f"{self.checkpoint_key}.download", mirror_to_xcom=False)
            previous, _ = downloads.load_download()
            self.log.info("Fetching %s (%d bytes) from the Volume into %s", volume_path, size, local)
            self.files_hook.download_file(volume_path, str(local), checkpoint=previous, sink=downloads)
            downloads.clear()
            marker.write_text(json.dumps(stamp))
        source = SourceIdentity(volume_path, size, None, f"version:{version}" if version else None)
        return local, source, work


def task_work_dir(context: Context, key: str) -> Path:
    """A folder of this task instance (all its tries) in the worker's temp dir."""
    ti = context.get("ti")
    parts = [str(getattr(ti, a, "")) for a in ("dag_id", "task_id", "run_id", "map_index")] + [key]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / "adt-zerobus" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_proto_message(spec: str) -> Any:
    """A message class from ``pkg.module.Class`` or ``<descriptor set file>:<full.message.Name>``."""
    path, sep, name = spec.rpartition(":")
    if sep and (os.path.sep in path or path.endswith((".desc", ".pb", ".binpb"))):
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: PLC0415

        files = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for proto in files.file:
            pool.Add(proto)
        try:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        except KeyError:
            raise ValueError(f"{path} does not define the message {name!r}") from None
    module, _, cls = spec.rpartition(".")
    if not module:
        raise ValueError(f"proto_message {spec!r}: expected pkg.module.Class or file.desc:pkg.Message")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"proto_message {spec!r} cannot be imported: {err}") from err
