"""The upload driver: single-shot, parallel multipart, or GCS-style resumable, resumable across tries.

One part loop for every backend: the source is a local file or a remote ranged object (``sources.py``),
and the target takes parts either at presigned URLs (the Files API) or as staged blocks committed as a
list (Azure); ``_PresignedParts`` and ``_StagedBlocks`` are the only code that differs.

Memory is ``parallelism`` buffers of ``part_size`` bytes, allocated once and reused: each worker reads
its part straight into its buffer (``os.preadv``, or a pinned ranged GET) and sends it in one call.
Finished parts (ETag and, with verification, SHA-256) go to a checkpoint sink; given a checkpoint, the
driver checks it against the source and the server and sends only the missing parts.

Failure policy: a fatal error (source changed, refused, already exists) aborts the remote session and
clears the checkpoint; a transient failure, an exhausted retry budget or a cancellation keeps both,
so the next try resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from airflow_databricks_transfer.engine.checkpoint import RemoteVersion, SourceFingerprint, UploadCheckpoint
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    FatalError,
    MultipartUnavailableError,
    RemoteChangedError,
    RetryBudgetExceeded,
    SessionLostError,
    SourceChangedError,
    TransferError,
    UrlExpiredError,
)
from airflow_databricks_transfer.engine.planning import (
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    FILES_API_S3,
    BackendLimits,
    UploadPlan,
    plan_upload,
)
from airflow_databricks_transfer.engine.ports import (
    NullSink,
    PresignedPartsTarget,
    PresignedUrl,
    SingleShotBody,
    SourceReader,
    StagedBlocksTarget,
    UploadCheckpointSink,
    UploadSource,
    UploadTarget,
)
from airflow_databricks_transfer.engine.progress import (
    BandwidthLimiter,
    ProgressTracker,
    Subscriber,
    throughput_mib_per_s,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RecoveryBudget, RetryPolicy, call_with_retry
from airflow_databricks_transfer.engine.saver import CoalescingSaver
from airflow_databricks_transfer.engine.sources import LocalFileSource
from airflow_databricks_transfer.engine.workers import run_workers

log = logging.getLogger(__name__)

MAX_URL_REFRESHES_PER_PART = 3


@dataclass(frozen=True)
class UploadOptions:
    part_size_bytes: int | None = None
    parallelism: int = 4
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES
    overwrite: bool = True
    # SHA-256 of every part: stored in the checkpoint so a resume can prove finished parts still match
    # the source, and reported as an S3-style composite ("<sha256 of part digests>-<parts>").
    verify_sha256: bool = False
    # SHA-256 of the whole file (reported as ``sha256``), read in order by one extra thread.
    full_sha256: bool = False
    bandwidth_limit_bytes_per_s: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # retries across the whole transfer; None means 10 + 2 per part
    max_total_retries: int | None = None
    url_batch: int = 16
    url_refresh_margin_s: float = 300.0
    limits: BackendLimits = FILES_API_S3
    progress_interval_s: float = 10.0
    # at most one checkpoint write per interval; the final state is always written
    checkpoint_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.parallelism <= 64:
            raise ValueError("parallelism must be in 1..64")
        if self.checkpoint_interval_s < 0:
            raise ValueError("checkpoint_interval_s must be >= 0")
        if self.url_batch < 1:
            raise ValueError("url_batch must be >= 1")
        if self.bandwidth_limit_bytes_per_s is not None and self.bandwidth_limit_bytes_per_s <= 0:
            raise ValueError("bandwidth_limit_bytes_per_s must be positive")


@dataclass(frozen=True)
class UploadResult:
    destination: str
    source: str
    mode: Literal["single", "multipart", "resumable"]
    bytes: int
    parts: int
    parts_resumed: int
    bytes_resumed: int
    bytes_sent: int
    retries: int
    seconds: float
    sha256_composite: str | None
    restarted_reason: str | None = None
    sha256: str | None = None

    @property
    def mib_per_s(self) -> float:
        """The same speed as the final progress line (``seconds`` is that event's elapsed time)."""
        return throughput_mib_per_s(self.bytes_sent, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "source": self.source,
            "mode": self.mode,
            "bytes": self.bytes,
            "parts": self.parts,
            "parts_resumed": self.parts_resumed,
            "bytes_resumed": self.bytes_resumed,
            "bytes_sent": self.bytes_sent,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(self.mib_per_s, 1),
            "sha256": self.sha256,
            "sha256_composite": self.sha256_composite,
            "restarted_reason": self.restarted_reason,
        }


class _Fetch:
    """One in-flight batch of part URLs; workers needing a URL from it wait on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _PartUrls:
    """Presigned part URLs fetched in batches ahead of use and refreshed before they expire.

    The lock guards only the maps, never a network call: one worker fetches a batch (retrying with
    backoff outside the lock) while workers whose URLs are still valid carry on, and workers that need
    a URL of that batch wait for it instead of fetching it again.
    """

    def __init__(
        self,
        target: PresignedPartsTarget,
        token: str,
        options: UploadOptions,
        part_count: int,
        call: Callable[[Callable[[], Any]], Any],
        stop: threading.Event,
    ) -> None:
        self._target, self._token, self._options = target, token, options
        self._count = part_count
        self._call = call
        self._stop = stop
        self._urls: dict[int, PresignedUrl] = {}
        self._pending: dict[int, _Fetch] = {}
        self._lock = threading.Lock()

    def _fresh(self, url: PresignedUrl | None) -> bool:
        return url is not None and url.expires_at - time.time() >= self._options.url_refresh_margin_s

    def get(self, n: int) -> PresignedUrl:
        for _ in range(3):
            with self._lock:
                url = self._urls.get(n)
                if url is not None and self._fresh(url):
                    return url
                fetch = self._pending.get(n)
                owner, count = fetch is None, 0
                if fetch is None:
                    fetch = _Fetch()
                    count = min(self._options.url_batch, self._count - n + 1)
                    for k in range(n, n + count):
                        self._pending.setdefault(k, fetch)
            if owner:
                self._fetch(fetch, n, count)
            else:
                while not fetch.done.wait(0.5):
                    if self._stop.is_set():
                        raise Cancelled("upload stopped while waiting for part URLs")
                if fetch.error is not None:
                    raise fetch.error
            with self._lock:
                url = self._urls.get(n)
            if url is not None:
                return url
        raise SessionLostError(f"the server returned no URL for part {n}")

    def _fetch(self, fetch: _Fetch, first: int, count: int) -> None:
        try:
            fresh = self._call(lambda: self._target.part_urls(self._token, first, count))
            with self._lock:
                self._urls.update(fresh)
        except BaseException as err:
            fetch.error = err
            raise
        finally:
            with self._lock:
                for k in [k for k, f in self._pending.items() if f is fetch]:
                    del self._pending[k]
            fetch.done.set()
        if first not in fresh:
            raise SessionLostError(f"the server returned no URL for part {first}")

    def invalidate(self, n: int) -> None:
        with self._lock:
            self._urls.pop(n, None)


# How one part is sent, under the shared retry policy: ``call(fn, what)`` retries ``fn``.
Call = Callable[[Callable[[], Any], str], Any]


class _PresignedParts:
    """Parts to presigned URLs, minted in batches; an expired URL is replaced, not retried."""

    def __init__(
        self,
        target: PresignedPartsTarget,
        cp: UploadCheckpoint,
        options: UploadOptions,
        call: Call,
        stop: threading.Event,
    ) -> None:
        self._target, self._call, self._stop = target, call, stop
        self._urls = _PartUrls(
            target,
            cp.session_token,
            options,
            cp.part_count,
            lambda fn: call(fn, "create-upload-part-urls"),
            stop,
        )

    def check_alive(self, first_missing: int) -> None:
        """The server is the truth: a dead session fails here, before any byte is sent."""
        self._urls.get(first_missing)

    def send(self, n: int, view: memoryview, pace: Callable[[int], None] | None) -> str:
        refreshes = 0
        while True:
            try:
                return self._send_once(n, view, pace)
            except UrlExpiredError as err:
                refreshes += 1
                if refreshes > MAX_URL_REFRESHES_PER_PART:
                    raise RetryBudgetExceeded(f"part {n}: URL expired {refreshes} times", err) from err
                log.info("%s: part %d URL expired; minting a new one", self._target.destination, n)
                self._urls.invalidate(n)

    def _send_once(self, n: int, view: memoryview, pace: Callable[[int], None] | None) -> str:
        def attempt() -> str:
            if self._stop.is_set():
                raise Cancelled("upload stopped")
            # paced per piece inside the send, so a retry's announced delay is the real one
            return self._target.put_part(self._urls.get(n), view, cancel=self._stop, pace=pace)

        etag: str = self._call(attempt, f"part {n}")
        return etag


class _StagedBlocks:
    """Parts staged as blocks named from the session and part number (the store checks each MD5)."""

    def __init__(
        self, target: StagedBlocksTarget, cp: UploadCheckpoint, call: Call, stop: threading.Event
    ) -> None:
        self._target, self._token, self._call, self._stop = target, cp.session_token, call, stop

    def check_alive(self, first_missing: int) -> None:
        pass  # nothing to mint: the block list was already reconciled with the store

    def send(self, n: int, view: memoryview, pace: Callable[[int], None] | None) -> str:
        def attempt() -> str:
            if self._stop.is_set():
                raise Cancelled("upload stopped")
            return self._target.stage_block(self._token, n, view, cancel=self._stop, pace=pace)

        ack: str = self._call(attempt, f"block {n}")
        return ack


class Uploader:
    """Upload one source (a local file or a remote ranged object) to one ``UploadTarget``.

    Not reusable: build one per transfer. ``kind`` names the checkpoint kind this transfer writes and
    accepts (e.g. ``azure_blob.to_volume``).
    """

    def __init__(
        self,
        target: UploadTarget,
        source: UploadSource | str | os.PathLike[str],
        options: UploadOptions | None = None,
        *,
        sink: UploadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
        kind: str = "files_api.upload",
    ) -> None:
        self.target = target
        self.source: UploadSource = (
            LocalFileSource(source) if isinstance(source, (str, os.PathLike)) else source
        )
        self.source_path = self.source.path
        self.kind = kind
        self.options = options or UploadOptions()
        self.sink: UploadCheckpointSink = sink or NullSink()
        self.subscribers = subscribers or []
        self._cancelled = False
        self._cancel_lock = threading.Lock()
        self._stop = threading.Event()  # per attempt: set by cancel() or by a failing worker
        self._retries = 0
        self._retry_lock = threading.Lock()
        self._budget: RecoveryBudget | None = None
        self._hasher: _FileHasher | None = None
        self._hash_stop = threading.Event()
        self._blocks = isinstance(target, StagedBlocksTarget)

    def cancel(self) -> None:
        """Stop the workers within seconds; the checkpoint and the remote session stay for the next try."""
        with self._cancel_lock:
            self._cancelled = True
            self._stop.set()
            self._hash_stop.set()

    def _fresh_stop(self) -> threading.Event:
        """A new stop event for the next attempt that still carries a cancel() made at any earlier time."""
        stop = threading.Event()
        with self._cancel_lock:
            if self._cancelled:
                stop.set()
            self._stop = stop
        return stop

    # ------------------------------------------------------------------ entry point
    def run(self, checkpoint: UploadCheckpoint | None = None) -> UploadResult:
        """Upload, resuming from ``checkpoint`` when it still fits the source and the server."""
        started = time.monotonic()
        try:
            result = self._run(checkpoint, started)
        except BaseException:
            self._hash_stop.set()
            raise
        if self._hasher is not None:
            result = replace(result, sha256=self._hasher.result()[0])
            self._hasher = None
        return result

    def _run(self, checkpoint: UploadCheckpoint | None, started: float) -> UploadResult:
        fingerprint = self.source.fingerprint()
        opts = self.options
        # the whole-object MD5 goes with a block commit (the store keeps it as Content-MD5); both digests
        # need an in-order read of the source, so only a local file gets them (a remote one is not read twice)
        md5 = self._blocks and self.source.local_path is not None
        if (opts.full_sha256 or md5) and self.source.local_path is not None:
            self._hasher = _FileHasher(self.source, fingerprint, self._hash_stop, md5=md5)
        elif opts.full_sha256:
            log.info("%s is remote: the SHA-256 of the whole file is not computed", self.source.path)
        plan = plan_upload(
            fingerprint.size,
            opts.limits,
            part_size=opts.part_size_bytes,
            multipart_threshold=opts.multipart_threshold_bytes,
        )
        restarted: str | None = None
        if checkpoint is not None and checkpoint.kind != self.kind:
            restarted = f"the checkpoint is of a {checkpoint.kind} transfer, not {self.kind}"
            log.warning("Not resuming %s: %s. Starting a clean upload.", self.target.destination, restarted)
            self.sink.clear()
            checkpoint = None
        if checkpoint is not None:
            restarted = checkpoint.validate_for(self.target.destination, fingerprint)
            if restarted is None and checkpoint.protocol == "multipart" and opts.verify_sha256:
                restarted = self._verify_finished_parts(checkpoint)
            if restarted is not None:
                log.warning(
                    "Not resuming %s: %s. Starting a clean upload.", self.target.destination, restarted
                )
                self._abort_quietly(checkpoint.session_token)
                self.sink.clear()
                checkpoint = None
            elif checkpoint.part_size != plan.part_size and plan.mode == "multipart":
                log.info("Resuming with the checkpoint's part size of %d bytes", checkpoint.part_size)
        checked_at = time.time()
        if not opts.overwrite and checkpoint is None and self._stat() is not None:
            raise AlreadyExistsError(f"{self.target.destination} already exists and overwrite is off")
        if plan.mode == "single" and checkpoint is None:
            self._fresh_stop()
            return self._single(fingerprint, started, checked_at)
        for _attempt in range(2):
            if self._fresh_stop().is_set():
                raise Cancelled("upload cancelled")
            try:
                return self._multipart(fingerprint, plan, checkpoint, started, restarted)
            except MultipartUnavailableError as err:
                if checkpoint is not None or fingerprint.size > opts.limits.max_single_shot_bytes:
                    raise MultipartUnavailableError(
                        f"{err}; a single-shot upload is limited to {opts.limits.max_single_shot_bytes} bytes"
                    ) from err
                log.warning(
                    "%s: multipart upload unavailable (%s); sending it in one request",
                    self.target.destination,
                    err,
                )
                return self._single(fingerprint, started, checked_at)
            except SessionLostError as err:
                # the server forgot the session (expired, aborted): only a clean start can help
                restarted = f"upload session lost ({err})"
                log.warning("%s: %s; starting a clean upload", self.target.destination, restarted)
                self.sink.clear()
                checkpoint = None
        raise SessionLostError(f"{self.target.destination}: the upload session was lost twice")

    # ------------------------------------------------------------------ helpers
    def _retry_logger(self, what: str | None) -> Callable[[int, TransferError, float], None]:
        prefix = f"{self.target.destination}: {what}" if what else self.target.destination

        def on_retry(attempt: int, err: TransferError, delay: float) -> None:
            with self._retry_lock:
                self._retries += 1
            log.info("%s: retry %d in %.1f s after %s", prefix, attempt, delay, err)

        return on_retry

    def _call(
        self, fn: Callable[[], Any], what: str | None = None, pace: Callable[[], float] | None = None
    ) -> Any:
        """``fn`` under the shared policy; ``what`` (e.g. "part 7") names it in the retry lines."""
        return call_with_retry(
            fn,
            self.options.retry,
            budget=self._budget,
            cancel=self._stop,
            on_retry=self._retry_logger(what),
            pace=pace,
        )

    def _stat(self) -> RemoteVersion | None:
        return self._call(self.target.stat, "HEAD")  # type: ignore[no-any-return]

    def _abort_quietly(self, token: str) -> None:
        # not under the run's stop event: a failing worker sets it, and that is when aborting matters
        policy = replace(self.options.retry, max_attempts=min(3, self.options.retry.max_attempts))
        try:
            call_with_retry(
                lambda: self.target.abort(token), policy, on_retry=self._retry_logger("abort-upload")
            )
        except TransferError as err:
            log.info("could not abort the old upload session (it may be gone already): %s", err)

    def _tracker(
        self, total: int, parts: int, started: float, limiter: BandwidthLimiter | None = None
    ) -> ProgressTracker:
        return ProgressTracker(
            f"upload {self.target.destination}",
            total,
            parts,
            subscribers=self.subscribers,
            interval_s=self.options.progress_interval_s,
            started=started,
            limiter=limiter,
        )

    def _limiter(self) -> BandwidthLimiter | None:
        rate = self.options.bandwidth_limit_bytes_per_s
        return BandwidthLimiter(rate) if rate else None

    def _pace(self, limiter: BandwidthLimiter | None, stop: threading.Event) -> Callable[[int], None] | None:
        """Paced per piece as it is sent, so the limit holds from the first byte of each part."""
        if limiter is None:
            return None
        return lambda n: limiter.acquire(n, stop)

    def _verify_finished_parts(self, cp: UploadCheckpoint) -> str | None:
        """With verification on, re-hash finished parts: a same-mtime rewrite must not slip through."""
        if not cp.part_sha256:
            log.info(
                "The checkpoint of %s has no part digests (written without verify_sha256): "
                "trusting the source fingerprint",
                cp.destination,
            )
            return None
        buf = memoryview(bytearray(cp.part_size))
        reader = self.source.reader(cp.source)
        try:
            for n in sorted(cp.parts):
                offset = (n - 1) * cp.part_size
                view = buf[: min(cp.part_size, cp.source.size - offset)]
                self._read(reader, view, offset, n)
                if hashlib.sha256(view).digest() != cp.part_sha256.get(n):
                    return f"part {n} of the source no longer matches its checkpointed SHA-256"
        finally:
            reader.close()
        return None

    def _read(self, reader: SourceReader, view: memoryview, offset: int, n: int) -> None:
        """Read a part: a remote source's reads are retried like any call; a local one's errors are fatal."""
        if self.source.local_path is not None:
            reader.read_into(view, offset, self._stop)
        else:
            self._call(lambda: reader.read_into(view, offset, self._stop), f"read part {n} of the source")

    def _ours(self, size: int, since: float, before: RemoteVersion | None = None) -> tuple[bool, str]:
        """Is the object at the destination provably one this upload wrote? (answer, reason)

        Provable means: it has the source's size, it is not the version seen before (``before``), and
        its Last-Modified is not older than ``since`` (a time on the store's clock, see
        ``UploadTarget.server_time``). Last-Modified has one-second resolution, so it
        is compared with the second ``since`` fell in; that is sound because ``since`` was taken before
        the stat that produced ``before``, so anything written before ``since`` is ``before`` itself.
        No Last-Modified, or no way to tell the versions apart, is not proof.
        """
        remote = self._stat()
        if remote is None:
            return False, "there is no file at the destination"
        if remote.size != size:
            return False, f"the file at the destination has {remote.size} bytes, not {size}"
        if before is not None and remote.same_version_as(before):
            return False, "the file at the destination is the version that was there before this upload"
        modified = remote.last_modified_s
        if modified is None:
            return False, "the file at the destination has no usable Last-Modified"
        if modified < int(since):
            return False, "the file at the destination was last modified before this upload started"
        return True, "the file at the destination has the source's size and was written by this upload"

    def _discard_torn(self, size: int, since: float, err: SourceChangedError) -> None:
        """The source changed while a committing request read it: never leave that object exposed."""
        ours, why = self._ours(size, self.target.server_time(since))
        if not ours:
            log.error(
                "%s: %s; not deleting the destination (%s): check what is there before using it",
                self.target.destination,
                err,
                why,
            )
            return
        try:
            self._call(self.target.delete, "delete torn upload")
        except TransferError as del_err:
            log.error(
                "%s: %s; the file this upload wrote from it may be torn and could not be deleted (%s)",
                self.target.destination,
                err,
                del_err,
            )
            return
        log.error(
            "%s: %s; deleted the file this upload had just written from it, so no torn file is "
            "exposed (a version that was there before was already replaced)",
            self.target.destination,
            err,
        )

    # ------------------------------------------------------------------ single-shot
    def _single(self, fingerprint: SourceFingerprint, started: float, checked_at: float) -> UploadResult:
        size = fingerprint.size
        opts = self.options
        self._budget = RecoveryBudget(opts.max_total_retries if opts.max_total_retries is not None else 10)
        limiter = self._limiter()
        tracker = self._tracker(size, 1, started, limiter)
        body: SingleShotBody
        if self.source.local_path is not None:
            body = (self.source.local_path, size)
        else:  # a small remote source: read it once into memory (below the multipart threshold)
            body = memoryview(bytearray(size))
            reader = self.source.reader(fingerprint)
            try:
                self._read(reader, body, 0, 1)
            finally:
                reader.close()
        digest = _digest_of(self.source, fingerprint, body) if opts.verify_sha256 else None
        stop = self._stop
        pace = self._pace(limiter, stop)
        attempts = 0
        first_sent_at = time.time()

        def attempt() -> None:
            nonlocal attempts, first_sent_at
            # the PUT commits when done: never start it from a changed file
            self.source.ensure_unchanged(fingerprint)
            attempts += 1
            if attempts == 1:
                first_sent_at = time.time()
            self.target.put_single(body, overwrite=opts.overwrite, cancel=stop, pace=pace)

        tracker.begin(1)
        try:
            self._call(attempt, "single-shot PUT")
        except SourceChangedError as err:
            if attempts:  # an earlier attempt may have committed bytes read while the file changed
                self._discard_torn(size, first_sent_at, err)
            raise
        except AlreadyExistsError:
            # overwrite is off and nothing was there at the check: a retried PUT whose first answer was
            # lost finds the file the first attempt committed
            if attempts < 2:
                raise
            ours, why = self._ours(size, self.target.server_time(min(first_sent_at, checked_at)))
            if not ours:
                raise
            log.info(
                "%s: a retried PUT found the file in place (%s): an earlier attempt whose answer was "
                "lost committed it",
                self.target.destination,
                why,
            )
        try:
            self.source.ensure_unchanged(fingerprint)
        except SourceChangedError as err:
            self._discard_torn(size, first_sent_at, err)
            raise
        tracker.add(size, part_done=True, unit=1)
        final_event = tracker.finish()
        composite = f"{hashlib.sha256(digest).hexdigest()}-1" if digest is not None else None
        return UploadResult(
            self.target.destination,
            fingerprint.path,
            "single",
            size,
            1,
            0,
            0,
            size,
            self._retries,
            final_event.elapsed_s,
            composite,
        )

    # ------------------------------------------------------------------ multipart / resumable
    def _multipart(
        self,
        fingerprint: SourceFingerprint,
        plan: UploadPlan,
        cp: UploadCheckpoint | None,
        started: float,
        restarted: str | None,
    ) -> UploadResult:
        opts = self.options
        if cp is None:
            # What is at the destination before any byte of this upload, so a lost session can be judged
            # later. The stat follows initiate (whose refusals explain a bad path best); nothing of this
            # session can be committed before its complete, so the stat still sees the prior version.
            session_started_at = time.time()
            session = self._call(lambda: self.target.initiate(overwrite=opts.overwrite), "initiate-upload")
            try:
                pre_upload = self._stat()
            except BaseException:
                self._abort_quietly(session.token)
                raise
            part_size = plan.part_size
            if session.protocol == "resumable" and self.source.local_path is None:
                self._abort_quietly(session.token)
                raise MultipartUnavailableError(
                    f"{self.target.destination}: the workspace offers only a resumable upload, which this "
                    "package sends from a local file; copy the source to a local file first"
                )
            if session.protocol == "resumable":
                part_size = max(256 * 1024, part_size // (256 * 1024) * (256 * 1024))
            part_count = max(1, -(-fingerprint.size // part_size))
            cp = UploadCheckpoint(
                self.target.destination,
                fingerprint,
                part_size,
                part_count,
                session.token,
                protocol=session.protocol,
                pre_upload=pre_upload,
                # on the store's clock, which stamps the Last-Modified it is compared with (initiate
                # and the stat answered by now, so the store's clock is known)
                session_started_at=self.target.server_time(session_started_at),
                kind=self.kind,
            )
            self.sink.save(cp, frozenset(range(cp.segment_count)))  # a kill right now can still resume
        else:
            if isinstance(self.target, StagedBlocksTarget):
                cp = self._reconcile_blocks(self.target, cp)
            log.info(
                "Resuming upload of %s: %d of %d parts already on the server",
                self.target.destination,
                len(cp.parts),
                cp.part_count,
            )
        self._budget = RecoveryBudget(
            opts.max_total_retries if opts.max_total_retries is not None else 10 + 2 * cp.part_count
        )
        saver: CoalescingSaver[UploadCheckpoint] = CoalescingSaver(
            self.sink.save, min_interval_s=self.options.checkpoint_interval_s
        )
        try:
            if cp.protocol == "resumable":
                return self._resumable(cp, saver, started, restarted)
            return self._parts(cp, saver, started, restarted)
        except (Cancelled, RetryBudgetExceeded):
            raise  # checkpoint and session stay for the next try
        except SessionLostError:
            raise
        except FatalError:
            self._abort_quietly(cp.session_token)
            self._clear_after(saver)
            raise
        finally:
            saver.close()

    def _reconcile_blocks(self, target: StagedBlocksTarget, cp: UploadCheckpoint) -> UploadCheckpoint:
        """The store is the truth: keep the parts it holds with the right size, re-stage the rest.

        Blocks are named from this session and their part number and the store checked each one's MD5
        when it took it, so a block of this session with the planned size holds this source's bytes
        (the source fingerprint was checked already), even one staged after the last checkpoint write.
        """
        staged = self._call(lambda: target.staged_blocks(cp.session_token), "get-block-list")
        expected = {
            n: min(cp.part_size, cp.source.size - (n - 1) * cp.part_size) for n in range(1, cp.part_count + 1)
        }
        kept = {n: etag for n, etag in cp.parts.items() if staged.get(n) == expected[n]}
        lost = sorted(set(cp.parts) - set(kept))
        adopted = sorted(
            n for n, size in staged.items() if n in expected and n not in kept and size == expected[n]
        )
        if lost:
            log.warning(
                "%s: %d checkpointed blocks are not staged on the store any more (or have another size): "
                "staging them again (first: %s)",
                self.target.destination,
                len(lost),
                lost[:5],
            )
        if adopted:
            log.info(
                "%s: %d blocks staged after the last checkpoint write are on the store; not sending them",
                self.target.destination,
                len(adopted),
            )
        parts: dict[int, str] = {**kept, **dict.fromkeys(adopted, "")}
        digests = {n: d for n, d in cp.part_sha256.items() if n in kept}
        if cp.part_sha256 and adopted:
            digests = {}  # an adopted block has no digest of ours: resumes stop comparing digests
        cp = replace(cp, parts=parts, part_sha256=digests)
        self.sink.save(cp, frozenset(range(cp.segment_count)))
        return cp

    def _clear_after(self, saver: CoalescingSaver[UploadCheckpoint]) -> None:
        """Clear the checkpoint only once the saver has written everything it holds, or it comes back."""
        with contextlib.suppress(Exception):  # a saver that failed has nothing more to write
            saver.flush()
        self.sink.clear()

    def _parts(
        self,
        cp: UploadCheckpoint,
        saver: CoalescingSaver[UploadCheckpoint],
        started: float,
        restarted: str | None,
    ) -> UploadResult:
        opts = self.options
        size = cp.source.size
        resumed_parts = len(cp.parts)
        resumed_bytes = cp.bytes_done
        limiter = self._limiter()
        tracker = self._tracker(size, cp.part_count, started, limiter)
        tracker.resumed(resumed_bytes, resumed_parts)
        stop = self._stop
        sender: _PresignedParts | _StagedBlocks
        if isinstance(self.target, StagedBlocksTarget):
            sender = _StagedBlocks(self.target, cp, self._call, stop)
        else:
            sender = _PresignedParts(cast(PresignedPartsTarget, self.target), cp, opts, self._call, stop)
        missing = cp.missing_parts()
        if missing:
            sender.check_alive(missing[0])
        state = {"cp": cp}
        state_lock = threading.Lock()
        pace = self._pace(limiter, stop)

        def worker(next_part: Callable[[], int | None]) -> None:
            buf = memoryview(bytearray(cp.part_size))
            reader = self.source.reader(cp.source)
            try:
                while (n := next_part()) is not None:
                    tracker.begin(n)
                    try:
                        offset = (n - 1) * cp.part_size
                        view = buf[: min(cp.part_size, size - offset)]
                        self._read(reader, view, offset, n)
                        digest = hashlib.sha256(view).digest() if opts.verify_sha256 else None
                        etag = sender.send(n, view, pace)
                        with state_lock:
                            state["cp"] = state["cp"].with_part(n, etag, digest)
                            saver.offer(state["cp"], state["cp"].segment_of(n))
                        tracker.add(len(view), part_done=True, unit=n)
                    finally:
                        tracker.end(n)
            finally:
                reader.close()

        run_workers(
            missing,
            min(opts.parallelism, max(1, len(missing))),
            worker,
            stop=stop,
            flush=lambda: saver.flush(state["cp"]),
            name="upload-part",
            severity=(FatalError, SessionLostError, RetryBudgetExceeded, TransferError),
        )
        final = state["cp"]
        # every part is on the server: make sure they came from one unchanged source, then complete
        self.source.ensure_unchanged(final.source)
        final = replace(final, phase="completing")
        saver.flush(final)
        content_md5: bytes | None = None
        if self._hasher is not None and self._blocks:
            content_md5 = self._hasher.result()[1]
        self._complete(final, content_md5)
        if self._blocks or any(not etag for etag in final.parts.values()):
            self._check_committed_size(final)
        final_event = tracker.finish()
        self._clear_after(saver)
        return UploadResult(
            self.target.destination,
            final.source.path,
            "multipart",
            size,
            final.part_count,
            resumed_parts,
            resumed_bytes,
            size - resumed_bytes,
            self._retries,
            final_event.elapsed_s,
            _composite(final),
            restarted,
        )

    def _complete(self, cp: UploadCheckpoint, content_md5: bytes | None = None) -> None:
        parts = sorted(cp.parts.items())
        try:
            self._call(
                lambda: self.target.complete(cp.session_token, parts, content_md5=content_md5),
                "complete-upload",
            )
        except SessionLostError as err:
            # A complete whose answer was lost, or a resume after one, finds no session; so does one
            # whose session expired or was aborted. Only a file provably written by it counts.
            self._accept_lost_session(cp, err)
        except AlreadyExistsError as err:
            # overwrite is off: a commit repeated after its answer was lost finds its own object; any
            # other object there (a writer who came during the upload) is kept and the upload fails
            if cp.session_started_at is None:
                raise
            ours, why = self._ours(cp.source.size, cp.session_started_at, cp.pre_upload)
            if not ours:
                raise AlreadyExistsError(f"{err}; {why}, so it is not replaced (overwrite is off)") from err
            log.info("%s: an earlier commit of this upload succeeded (%s)", cp.destination, why)

    def _check_committed_size(self, cp: UploadCheckpoint) -> None:
        """Parts acknowledged without an ETag (an Azure Put Block behind the Files API, or a block list)
        were checked at commit for presence only, so a part replaced by another writer of this session
        (a zombie try) goes unseen there; the committed object's size is what is left to compare."""
        remote = self._stat()
        if remote is not None and remote.size == cp.source.size:
            return
        found = "no file" if remote is None else f"{remote.size} bytes"
        raise RemoteChangedError(
            f"{cp.destination}: complete-upload succeeded but the destination holds {found}, not the "
            f"source's {cp.source.size} bytes. Its parts carry no ETags (Azure), so a part replaced "
            "after this upload sent it could not be refused, or another writer replaced the file; check "
            "the destination before using it."
        )

    def _accept_lost_session(self, cp: UploadCheckpoint, err: SessionLostError) -> None:
        """Return if the remote object is provably this upload's, else raise SessionLostError (restart)."""
        if cp.session_started_at is None:
            ours, why = False, "the checkpoint predates recording the destination's prior version"
        else:
            ours, why = self._ours(cp.source.size, cp.session_started_at, cp.pre_upload)
        if ours:
            log.info(
                "%s: the upload session is gone but %s: an earlier complete-upload succeeded",
                cp.destination,
                why,
            )
            return
        raise SessionLostError(
            f"{err}; the session ended before completing and {why}, so it cannot count as uploaded"
        ) from err

    def _resumable(
        self,
        cp: UploadCheckpoint,
        saver: CoalescingSaver[UploadCheckpoint],
        started: float,
        restarted: str | None,
    ) -> UploadResult:
        """GCS-style: sequential chunks with Content-Range; after any doubt, ask the server how far it got."""
        size = cp.source.size
        target = cast(PresignedPartsTarget, self.target)
        url = self._call(lambda: target.resumable_url(cp.session_token), "create-resumable-upload-url")
        resumed = cp.confirmed_bytes
        if resumed:
            confirmed = self._call(lambda: target.query_confirmed(url), "resumable status")
            resumed = size if confirmed is None else confirmed
        limiter = self._limiter()
        tracker = self._tracker(size, cp.part_count, started, limiter)
        tracker.resumed(resumed)
        stop = self._stop
        pace = self._pace(limiter, stop)
        offset = resumed
        final_sent_at: float | None = None
        buf = memoryview(bytearray(cp.part_size))
        reader = self.source.reader(cp.source)
        try:
            while offset < size:
                if self._stop.is_set():
                    raise Cancelled("upload cancelled")
                view = buf[: min(cp.part_size, size - offset)]
                chunk = (offset // cp.part_size) + 1
                tracker.begin(chunk)
                self._read(reader, view, offset, chunk)
                last = offset + len(view) == size
                if last:
                    # the final chunk commits the object: never send it from a changed source
                    self.source.ensure_unchanged(cp.source)
                    final_sent_at = final_sent_at or time.time()
                start = offset

                def attempt(v: memoryview = view, s: int = start, is_last: bool = last) -> int | None:
                    return target.put_chunk(url, v, s, size if is_last else None, cancel=stop, pace=pace)

                try:
                    confirmed = self._chunk_with_recovery(attempt, url, f"chunk {chunk}")
                except SessionLostError as err:
                    if final_sent_at is None:
                        raise
                    self._accept_lost_session(cp, err)  # the final chunk's answer may have been lost
                    confirmed = None
                new_offset = size if confirmed is None else confirmed
                tracker.end(chunk)
                tracker.add(new_offset - offset, part_done=True, unit=chunk)
                offset = new_offset
                cp = replace(cp, confirmed_bytes=offset)
                saver.offer(cp)
        finally:
            reader.close()
        try:
            self.source.ensure_unchanged(cp.source)
        except SourceChangedError as err:
            if final_sent_at is not None:
                self._discard_torn(size, final_sent_at, err)
            raise
        final_event = tracker.finish()
        self._clear_after(saver)
        return UploadResult(
            self.target.destination,
            cp.source.path,
            "resumable",
            size,
            cp.part_count,
            0,
            resumed,
            size - resumed,
            self._retries,
            final_event.elapsed_s,
            None,
            restarted,
        )

    def _chunk_with_recovery(
        self, send: Callable[[], int | None], url: PresignedUrl, what: str
    ) -> int | None:
        """Send a chunk; after a transient failure wait as the policy says, then ask the server.

        The chunk may have partly landed, so it is not blindly sent again: the confirmed offset the
        server reports decides where the next chunk starts. Backoff, Retry-After and the transfer's
        budget apply as to every other request.
        """
        sent = False

        def attempt() -> int | None:
            nonlocal sent
            if not sent:
                sent = True
                return send()
            return cast(PresignedPartsTarget, self.target).query_confirmed(url)

        confirmed: int | None = self._call(attempt, what)
        return confirmed


def _digest_of(source: UploadSource, fingerprint: SourceFingerprint, body: SingleShotBody) -> bytes:
    if isinstance(body, memoryview):
        return hashlib.sha256(body).digest()
    h = hashlib.sha256()
    buf = memoryview(bytearray(min(max(fingerprint.size, 1), 8 * 1024 * 1024)))
    reader = source.reader(fingerprint)
    try:
        offset = 0
        while offset < fingerprint.size:
            view = buf[: min(len(buf), fingerprint.size - offset)]
            reader.read_into(view, offset)
            h.update(view)
            offset += len(view)
    finally:
        reader.close()
    return h.digest()


class _FileHasher:
    """SHA-256 (and, for a block commit, MD5) of the whole local source, read in order by one thread
    while the parts go out in parallel."""

    def __init__(
        self,
        source: UploadSource,
        fingerprint: SourceFingerprint,
        stop: threading.Event,
        *,
        md5: bool = False,
    ) -> None:
        self._source, self._fingerprint, self._stop, self._md5 = source, fingerprint, stop, md5
        self._digest: tuple[str | None, bytes | None] = (None, None)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            h = hashlib.sha256()
            m = hashlib.md5(usedforsecurity=False) if self._md5 else None
            buf = memoryview(bytearray(4 * 1024 * 1024))
            size = self._fingerprint.size
            reader = self._source.reader(self._fingerprint)
            try:
                offset = 0
                while offset < size and not self._stop.is_set():
                    view = buf[: min(len(buf), size - offset)]
                    reader.read_into(view, offset)
                    h.update(view)
                    if m is not None:
                        m.update(view)
                    offset += len(view)
            finally:
                reader.close()
            if not self._stop.is_set():
                self._digest = (h.hexdigest(), m.digest() if m is not None else None)
        except BaseException as err:  # noqa: BLE001 - re-raised by result()
            self._error = err

    def result(self) -> tuple[str | None, bytes | None]:
        """(SHA-256 hex, MD5 bytes or None)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest


def _composite(cp: UploadCheckpoint) -> str | None:
    if not cp.part_sha256 or len(cp.part_sha256) != cp.part_count:
        return None
    joined = b"".join(cp.part_sha256[n] for n in range(1, cp.part_count + 1))
    return f"{hashlib.sha256(joined).hexdigest()}-{cp.part_count}"
