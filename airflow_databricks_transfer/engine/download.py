"""The download driver: parallel ranged GETs into a temp file beside the destination, then a rename.

The transfer is pinned to one remote version (ETag / Last-Modified); if that changes mid-way the
partial file is discarded and the download starts again, so two versions are never spliced. Finished
chunks go to a checkpoint so a retry (even in a new process) fetches only what is missing; before a
checkpoint names a chunk, the chunk is made durable (one fdatasync per checkpoint write, in the saver
thread), so a resume after a host crash never trusts holes. The temp file is sized up front, so a full
disk fails at the start with a clear error instead of mid-way, and a disk that fills later still leaves
a resumable state. Every path is derived from the caller's arguments, never read from a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, RemoteVersion
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    ConnectionLostError,
    FatalError,
    InsufficientSpaceError,
    RemoteChangedError,
    RetryableError,
    TransferError,
    UrlExpiredError,
)
from airflow_databricks_transfer.engine.ports import DownloadCheckpointSink, DownloadSource, NullSink
from airflow_databricks_transfer.engine.progress import (
    BandwidthLimiter,
    ProgressTracker,
    Subscriber,
    throughput_mib_per_s,
)
from airflow_databricks_transfer.engine.retry import Cancelled, RecoveryBudget, RetryPolicy, call_with_retry
from airflow_databricks_transfer.engine.saver import DEFAULT_MIN_INTERVAL_S, CoalescingSaver
from airflow_databricks_transfer.engine.verify import (
    AutoVerifier,
    FileVerifier,
    check_md5,
    check_size,
    run_verifiers,
    verifiers_for,
)
from airflow_databricks_transfer.engine.workers import run_workers

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_VERSION_RESTARTS = 2
MAX_URL_REFRESHES = 3
# O_DIRECT wants offsets, lengths and buffer addresses aligned to the device's logical block size
# (512 B or 4 KiB); 4 KiB suits both
ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
# local disk filesystems whose O_DIRECT writes are plain block I/O; elsewhere (tmpfs, NFS, FUSE,
# overlay) it is a no-op, slower, or refused, so the page cache is kept there
_DIRECT_IO_FILESYSTEMS = frozenset({"ext4", "xfs"})
# reads between bandwidth-limiter checks when a limit is set: small, so the limit holds from the start
_LIMITED_READ = 256 * 1024


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> str | None:
    """This boot of the host (Linux); None where the kernel does not say."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip() or None
    except OSError:
        return None


def make_durable(fd: int) -> None:
    """Put every byte written to ``fd`` so far on stable storage, with the extents that locate it.

    fdatasync, not sync_file_range: the temp file is sparse, so the first write to a range allocates
    its blocks, and sync_file_range writes data pages without that allocation (nor a cache flush); after
    a crash the range would read back as a hole. One call per checkpoint write (at most one a second by
    default) keeps it off the data path.
    """
    os.fdatasync(fd)


@dataclass(frozen=True)
class DownloadOptions:
    chunk_size_bytes: int = 32 * MiB
    parallelism: int = 4
    # per worker: bytes received before each write (4 MiB writes halve the CPU per GiB on tmpfs
    # against 256 KiB, and are what O_DIRECT wants)
    buffer_size_bytes: int = 4 * MiB
    overwrite: bool = True
    compute_sha256: bool = True
    expected_sha256: str | None = None
    offset: int = 0
    length: int | None = None
    bandwidth_limit_bytes_per_s: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_total_retries: int | None = None
    progress_interval_s: float = 10.0
    fsync: bool = False
    # fdatasync the temp file before each checkpoint write that names new chunks (see make_durable)
    durable_checkpoints: bool = True
    # at most one checkpoint write per interval; the final state is always written
    checkpoint_interval_s: float = DEFAULT_MIN_INTERVAL_S
    # write the temp file with O_DIRECT, past the page cache: None = where it pays (a local ext4 or
    # xfs disk). Filling new page-cache pages costs 1-3 CPU-s per GiB on ext4, O_DIRECT about 0.3;
    # the file is then not in the page cache when the download returns.
    direct_io: bool | None = None
    # checks of the finished file before it is renamed into place (engine/verify.py); a failure deletes
    # the partial file and the checkpoint. The size is always checked.
    verifiers: tuple[FileVerifier, ...] = ()
    # compare the whole object's MD5 with the store's Content-MD5, when it has one and the whole object
    # is downloaded (hashed in the same in-order pass as the SHA-256)
    verify_content_md5: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint_interval_s < 0:
            raise ValueError("checkpoint_interval_s must be >= 0")
        if not 1 <= self.parallelism <= 64:
            raise ValueError("parallelism must be in 1..64")
        if self.chunk_size_bytes <= 0 or self.buffer_size_bytes <= 0:
            raise ValueError("chunk and buffer sizes must be positive")
        if self.offset < 0 or (self.length is not None and self.length < 0):
            raise ValueError("offset and length must be non-negative")
        if self.expected_sha256 is not None and not self.compute_sha256:
            raise ValueError("expected_sha256 needs compute_sha256")


@dataclass(frozen=True)
class DownloadResult:
    source: str
    destination: str
    bytes: int
    chunks: int
    chunks_resumed: int
    bytes_resumed: int
    bytes_received: int
    retries: int
    seconds: float
    sha256: str | None
    remote_etag: str | None
    restarted_reason: str | None = None
    # what the finished file was checked with: "size", "content-md5", and each verifier's name
    verified: tuple[str, ...] = ()

    @property
    def mib_per_s(self) -> float:
        """The same speed as the final progress line (``seconds`` is that event's elapsed time)."""
        return throughput_mib_per_s(self.bytes_received, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "chunks_resumed": self.chunks_resumed,
            "bytes_resumed": self.bytes_resumed,
            "bytes_received": self.bytes_received,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(self.mib_per_s, 1),
            "sha256": self.sha256,
            "verified": list(self.verified),
            "restarted_reason": self.restarted_reason,
        }


def temp_path_for(destination: str) -> str:
    head, tail = os.path.split(os.path.abspath(destination))
    return os.path.join(head, f".{tail}.adt-partial")


def _is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _disk_full(path: str, needed: int) -> InsufficientSpaceError:
    free = _free_bytes(path)
    detail = f"{free} bytes free, {needed} needed" if free is not None else f"{needed} bytes needed"
    return InsufficientSpaceError(
        f"no space left for {path} ({detail}); finished chunks are kept: free some space and retry to resume"
    )


def _direct_io_pays(path: str) -> bool:
    """Whether the folder of ``path`` is on a local disk filesystem where O_DIRECT is plain block I/O."""
    if not _O_DIRECT:
        return False
    real, best, kind = os.path.realpath(os.path.dirname(path) or "."), "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = f.read().splitlines()
    except OSError:
        return False
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fields[2]
    return kind in _DIRECT_IO_FILESYSTEMS


def _aligned_buffer(size: int) -> memoryview:
    """A page-aligned buffer (anonymous mmap), as O_DIRECT needs; bytearray gives no alignment."""
    return memoryview(mmap.mmap(-1, size))


class _TempFile:
    """The temp file's write side, shared by the workers.

    With ``direct``, pieces whose offset and length are ``ALIGN``-aligned are written with O_DIRECT:
    4 workers filling new page-cache pages of one ext4 file cost 1-3 CPU-s per GiB (fresh pages,
    the inode lock), O_DIRECT about 0.3. Other pieces (a file's unaligned tail, or all where direct
    I/O is off or refused) are written buffered, one at a time: the kernel serialises buffered writes
    to one file anyway, and threads queued on its inode lock spin on it, burning CPU the others need.
    """

    def __init__(self, path: str, direct: bool, lock: threading.Lock) -> None:
        self._fd = os.open(path, os.O_WRONLY)
        self._direct_fd: int | None = None
        if direct and _O_DIRECT:
            try:
                self._direct_fd = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError as err:
                log.debug("no O_DIRECT for %s (%s); writing through the page cache", path, err)
        self._lock = lock  # shared by every writer of the file

    def write(self, data: memoryview, offset: int) -> None:
        while len(data):
            fd = self._direct_fd
            if fd is not None and offset % ALIGN == 0 and len(data) % ALIGN == 0:
                try:
                    n = os.pwrite(fd, data, offset)
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    log.debug("O_DIRECT write refused (%s); writing through the page cache", err)
                    self._direct_fd = None
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    continue
            else:
                with self._lock:
                    n = os.pwrite(self._fd, data, offset)
            data, offset = data[n:], offset + n

    def close(self) -> None:
        for fd in (self._fd, self._direct_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._direct_fd = None


class Downloader:
    """Download one remote object (or a byte range of it) to one local path."""

    def __init__(
        self,
        source: DownloadSource,
        destination: str | os.PathLike[str],
        options: DownloadOptions | None = None,
        *,
        sink: DownloadCheckpointSink | None = None,
        subscribers: list[Subscriber] | None = None,
        kind: str = "files_api.download",
    ) -> None:
        self.source = source
        self.kind = kind
        self.destination = os.path.abspath(os.fspath(destination))
        self.options = options or DownloadOptions()
        self.sink: DownloadCheckpointSink = sink or NullSink()
        self.subscribers = subscribers or []
        self._cancelled = False
        self._stop = threading.Event()  # per run: set by cancel() or by a failing worker
        self._retries = 0
        self._lock = threading.Lock()
        self._budget = RecoveryBudget(0)
        self._temp = temp_path_for(self.destination)
        self._chunk_size = self.options.chunk_size_bytes
        self._chunk_count = 0

    def cancel(self) -> None:
        """Stop the workers within seconds; finished chunks stay in the checkpoint for the next try."""
        self._cancelled = True
        self._stop.set()

    def run(self, checkpoint: DownloadCheckpoint | None = None) -> DownloadResult:
        """Download, resuming from ``checkpoint`` when it still describes this transfer.

        A fatal error removes the partial file and the checkpoint (a retry cannot use them); a full
        disk, transient errors past the budget and cancellation keep both for the next try.
        """
        try:
            return self._run(checkpoint)
        except InsufficientSpaceError:
            raise
        except FatalError as err:
            self._discard()
            self.sink.clear()
            log.warning(
                "Download of %s failed (%s); removed the partial file and the checkpoint",
                self.source.path,
                err,
            )
            raise

    def _run(self, checkpoint: DownloadCheckpoint | None) -> DownloadResult:
        started = time.monotonic()
        opts = self.options
        if os.path.isdir(self.destination):
            raise AlreadyExistsError(f"destination {self.destination} is a directory")
        if not opts.overwrite and os.path.exists(self.destination):
            raise AlreadyExistsError(f"{self.destination} exists and overwrite is off")
        parent = os.path.dirname(self.destination)
        if not os.path.isdir(parent):
            raise FatalError(f"the destination folder {parent} does not exist")
        restarted: str | None = None
        for _attempt in range(MAX_VERSION_RESTARTS + 1):
            if self._cancelled:
                raise Cancelled("download cancelled")
            self._stop = threading.Event()
            remote = self.source.stat()
            checkpoint, why = self._usable(checkpoint, remote)
            if why:
                restarted = why
                log.warning("Not resuming the download of %s: %s. Starting clean.", self.source.path, why)
            try:
                return self._run_version(remote, checkpoint, started, restarted)
            except RemoteChangedError as err:
                restarted = f"the remote file changed during the download ({err})"
                log.warning(
                    "%s: %s; discarding the partial file and starting again", self.source.path, restarted
                )
                self._discard()
                checkpoint = None
        raise RemoteChangedError(
            f"{self.source.path} kept changing during the download ({MAX_VERSION_RESTARTS + 1} attempts)"
        )

    # ------------------------------------------------------------------ checkpoint validation
    def _usable(
        self, cp: DownloadCheckpoint | None, remote: RemoteVersion
    ) -> tuple[DownloadCheckpoint | None, str | None]:
        """The checkpoint if it describes this very transfer, else (None, why).

        The task state store can be written through Airflow's REST API: every path is compared with
        the one derived from our own arguments, and a checkpoint that names others is dropped without
        touching anything at its paths (only our own derived temp file is removed).
        """
        if cp is None:
            return None, None
        opts = self.options
        why = None
        length = self._length(remote)
        boot = current_boot_id()
        if cp.kind != self.kind:
            why = f"the checkpoint is of a {cp.kind} transfer, not {self.kind}"
        elif cp.source != self.source.path:
            why = f"checkpoint is for {cp.source!r}, not {self.source.path!r}"
        elif cp.destination != self.destination:
            why = f"checkpoint is for destination {cp.destination!r}, not {self.destination!r}"
        elif cp.temp_path != self._temp:
            why = f"checkpoint names the partial file {cp.temp_path!r}, not {self._temp!r}"
        elif cp.remote != remote:
            why = "the remote file changed since the last try"
        elif (cp.offset, cp.length, cp.chunk_size) != (opts.offset, length, opts.chunk_size_bytes):
            why = "the requested range or chunk size differs from the last try"
        elif not cp.durable and (boot is None or cp.boot_id != boot):
            why = (
                "the host may have restarted since the last try, and that try did not make its chunks "
                "durable before checkpointing them (they could be holes)"
            )
        elif not os.path.isfile(self._temp) or os.path.getsize(self._temp) != cp.length:
            why = "the partial file of the last try is gone or has the wrong size"
        if why:
            self._discard()
            self.sink.clear()
            return None, why
        return cp, None

    def _length(self, remote: RemoteVersion) -> int:
        opts = self.options
        if opts.offset > remote.size:
            raise FatalError(
                f"offset {opts.offset} is beyond the end of {self.source.path} ({remote.size} bytes)"
            )
        available = remote.size - opts.offset
        return available if opts.length is None else min(opts.length, available)

    def _discard(self) -> None:
        """Remove our partial file: always the path derived from the destination, never a stored one."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)

    def _checkpoint_writer(self, sync_fd: int | None) -> Callable[[DownloadCheckpoint, frozenset[int]], None]:
        """The saver's write: durable first (when asked), then the checkpoint that names the chunks."""
        synced, unsupported = False, False

        def write(cp: DownloadCheckpoint, changed: frozenset[int]) -> None:
            nonlocal synced, unsupported
            if sync_fd is not None and not unsupported and (changed or not synced):
                try:
                    make_durable(sync_fd)  # one flush covers every chunk this checkpoint adds
                    synced = True
                except OSError as err:
                    if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    unsupported = True
                    log.warning("%s cannot be flushed to stable storage (%s)", cp.temp_path, err)
            if unsupported:
                cp = replace(cp, durable=False)  # then a resume after a reboot will not trust it
            pin = self.source.data_pin
            if pin != cp.data_pin:
                cp = replace(cp, data_pin=pin)
            self.sink.save(cp, changed)

        return write

    # ------------------------------------------------------------------ one pinned version
    def _run_version(
        self, remote: RemoteVersion, cp: DownloadCheckpoint | None, started: float, restarted: str | None
    ) -> DownloadResult:
        opts = self.options
        length = self._length(remote)
        boot = current_boot_id()
        if cp is None:
            self.source.restore_pin(None)
            cp = DownloadCheckpoint(
                self.source.path,
                remote,
                self.destination,
                self._temp,
                opts.offset,
                length,
                opts.chunk_size_bytes,
                boot_id=boot,
                durable=opts.durable_checkpoints,
                kind=self.kind,
            )
            # Fail at once if the disk cannot hold the file. Space is reserved (posix_fallocate, below)
            # only on local ext4/xfs, where it is cheap; on tmpfs it would allocate every page serially
            # before the first byte arrives. A disk that fills up later still ends in
            # InsufficientSpaceError with the finished chunks kept for a resume.
            free = _free_bytes(cp.temp_path)
            if free is not None and free < length:
                raise _disk_full(cp.temp_path, length)
            fd = os.open(cp.temp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
            self.sink.save(cp, frozenset())
        else:
            self.source.restore_pin(cp.data_pin)
            # from now on this try writes it: its first write makes every chunk on disk durable
            cp = replace(cp, boot_id=boot, durable=opts.durable_checkpoints)
            log.info(
                "Resuming download of %s: %d of %d chunks already on disk",
                self.source.path,
                len(cp.done_chunks),
                cp.chunk_count,
            )
        self._chunk_size, self._chunk_count = cp.chunk_size, cp.chunk_count
        resumed_chunks, resumed_bytes = len(cp.done_chunks), cp.bytes_done
        self._budget = RecoveryBudget(
            opts.max_total_retries if opts.max_total_retries is not None else 10 + 2 * cp.chunk_count
        )
        limiter = (
            BandwidthLimiter(opts.bandwidth_limit_bytes_per_s) if opts.bandwidth_limit_bytes_per_s else None
        )
        tracker = ProgressTracker(
            f"download {self.source.path}",
            length,
            cp.chunk_count,
            subscribers=self.subscribers,
            interval_s=opts.progress_interval_s,
            unit="chunk",
            started=started,
            limiter=limiter,
        )
        tracker.resumed(resumed_bytes, resumed_chunks)
        todo = [i for i in range(cp.chunk_count) if i not in cp.done_chunks]
        sync_fd = os.open(cp.temp_path, os.O_RDONLY) if opts.durable_checkpoints else None
        saver: CoalescingSaver[DownloadCheckpoint] = CoalescingSaver(
            self._checkpoint_writer(sync_fd), min_interval_s=opts.checkpoint_interval_s
        )
        state = {"cp": cp}
        local_disk = _direct_io_pays(cp.temp_path)
        direct = opts.direct_io if opts.direct_io is not None else local_disk
        if direct and local_disk and cp.length:
            self._preallocate(cp)
        md5 = bool(
            opts.verify_content_md5 and remote.content_md5 and cp.offset == 0 and cp.length == remote.size
        )
        # one thread per digest: each reads the file in order behind the writers, and on two cores
        # SHA-256 (~1.6 GB/s) and MD5 (~0.75 GB/s) side by side keep up with the network where one
        # thread doing both held a verified Azurite download at the SDK's speed
        hashers = {
            name: _InOrderHasher(cp, self._stop, direct, name)
            for name, wanted in (("sha256", opts.compute_sha256 or md5), ("md5", md5))
            if wanted
        }
        write_lock = threading.Lock()

        def worker(next_chunk: Callable[[], int | None]) -> None:
            buf = _aligned_buffer(opts.buffer_size_bytes)
            out = _TempFile(cp.temp_path, direct, write_lock)  # own descriptors: closed by their user
            try:
                while (index := next_chunk()) is not None:
                    tracker.begin(index)  # 0-based, as in DownloadCheckpoint.done_chunks
                    try:
                        start = index * cp.chunk_size
                        size = min(cp.chunk_size, cp.length - start)
                        written = (
                            functools.partial(_advance_all, hashers.values(), index) if hashers else None
                        )
                        self._fetch_chunk(out, buf, start, size, remote, tracker, limiter, written)
                        with self._lock:
                            state["cp"] = state["cp"].with_chunk(index)
                            saver.offer(state["cp"], index)
                        tracker.add(0, part_done=True, unit=index)
                    finally:
                        tracker.end(index)
            finally:
                out.close()

        try:
            run_workers(
                todo,
                min(opts.parallelism, max(1, len(todo))),
                worker,
                stop=self._stop,
                flush=lambda: self._final_checkpoint(saver, state["cp"]),
                name="download",
                severity=(InsufficientSpaceError, RemoteChangedError, FatalError, TransferError),
            )
        finally:
            saver.close()
            if sync_fd is not None:
                os.close(sync_fd)
        digest = hashers["sha256"].result().hex() if "sha256" in hashers else None
        md5_digest = hashers["md5"].result() if "md5" in hashers else None
        return self._finish(
            state["cp"],
            remote,
            tracker,
            started,
            resumed_chunks,
            resumed_bytes,
            restarted,
            digest,
            md5_digest,
        )

    @staticmethod
    def _final_checkpoint(saver: CoalescingSaver[DownloadCheckpoint], cp: DownloadCheckpoint) -> None:
        """Save how far a stopped try got; a finished one skips it: the checkpoint is deleted right
        after the rename, and its flush would make the end of every download wait for the disk."""
        if len(cp.done_chunks) == cp.chunk_count:
            saver.drop()
        else:
            saver.flush(cp)

    def _preallocate(self, cp: DownloadCheckpoint) -> None:
        """Allocate the temp file's blocks (unwritten extents: cheap on ext4 and xfs, no zeroing).

        ext4 then lets aligned O_DIRECT writes of the workers run side by side under a shared inode
        lock (into holes they go one at a time), and the space is held from the start.
        """
        fd = os.open(cp.temp_path, os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, cp.length)
        except OSError as err:
            if _is_disk_full(err):
                raise _disk_full(cp.temp_path, cp.length - cp.bytes_done) from err
            log.debug("could not preallocate %s: %s", cp.temp_path, err)
        finally:
            os.close(fd)

    def _fetch_chunk(
        self,
        out: _TempFile,
        buf: memoryview,
        start: int,
        size: int,
        remote: RemoteVersion,
        tracker: ProgressTracker,
        limiter: BandwidthLimiter | None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Fetch [start, start+size) of the range; after a broken body, continue from the last byte.

        Bytes are gathered into ``buf`` and written in pieces that end on an ``ALIGN`` boundary of the
        file, so whole pieces can go past the page cache; ``written(end)`` follows the written prefix
        (an absolute offset in the temp file).
        """
        done = 0
        refreshes = 0
        read_max = len(buf) if limiter is None else min(len(buf), _LIMITED_READ)

        def put(n: int) -> None:
            nonlocal done
            try:
                out.write(buf[:n], start + done)
            except OSError as err:
                if _is_disk_full(err):
                    raise _disk_full(self.destination, size - done) from err
                raise
            done += n
            tracker.add(n)
            if written is not None:
                written(start + done)

        while True:

            def attempt() -> None:
                reader = self.source.open_range(
                    self.options.offset + start + done, size - done, remote, cancel=self._stop
                )
                try:
                    while done < size:
                        # pieces end on ALIGN boundaries of the file (after a cut, too)
                        if len(buf) >= 2 * ALIGN:
                            piece = len(buf) - len(buf) % ALIGN - (start + done) % ALIGN
                        else:
                            piece = len(buf)
                        piece = min(piece, size - done)
                        filled = 0
                        try:
                            while filled < piece:
                                n = reader.readinto(buf[filled : min(piece, filled + read_max)])
                                if n == 0:
                                    raise ConnectionLostError(
                                        f"body ended {size - done - filled} bytes early"
                                    )
                                filled += n
                                if limiter is not None:
                                    limiter.acquire(n, self._stop)
                                if self._stop.is_set():
                                    raise Cancelled("download stopped")
                        except RetryableError:
                            if filled:
                                put(filled)  # keep what arrived: the retry asks only for the rest
                            raise
                        put(piece)
                finally:
                    reader.close()

            try:
                call_with_retry(
                    attempt,
                    self.options.retry,
                    budget=self._budget,
                    cancel=self._stop,
                    on_retry=functools.partial(self._count_retry, start),
                )
                return
            except UrlExpiredError as err:
                refreshes += 1
                if refreshes > MAX_URL_REFRESHES:
                    raise
                log.info("download URL expired; minting a new one (%s)", err)
                self.source.invalidate_url()

    def _count_retry(self, start: int, attempt: int, err: TransferError, delay: float) -> None:
        with self._lock:
            self._retries += 1
        log.info(
            "%s: chunk %d/%d: retry %d in %.1f s after %s",
            self.source.path,
            start // self._chunk_size + 1,
            self._chunk_count,
            attempt,
            delay,
            err,
        )

    def _finish(
        self,
        cp: DownloadCheckpoint,
        remote: RemoteVersion,
        tracker: ProgressTracker,
        started: float,
        resumed_chunks: int,
        resumed_bytes: int,
        restarted: str | None,
        digest: str | None,
        md5_digest: bytes | None = None,
    ) -> DownloadResult:
        opts = self.options
        check_size(cp.temp_path, cp.length)  # VerificationError: run() removes the partial and checkpoint
        verified = ["size"]
        if md5_digest is not None and remote.content_md5:
            check_md5(md5_digest, remote.content_md5, path=self.source.path)
            verified.append("content-md5")
        for verifier in opts.verifiers:
            # "auto" picks by the destination's name: the partial file's name ends in .adt-partial
            chosen = verifiers_for(self.destination) if isinstance(verifier, AutoVerifier) else [verifier]
            run_verifiers(cp.temp_path, cp.length, chosen)
            verified.extend(v.name for v in chosen)
        if opts.expected_sha256 is not None and digest != opts.expected_sha256.lower():
            self._discard()
            self.sink.clear()
            raise ChecksumMismatchError(
                f"SHA-256 of {self.source.path} is {digest}, expected {opts.expected_sha256.lower()}; "
                "removed the partial file"
            )
        # one last look: the object must still be the version we pinned (a HEAD is cheap)
        if self.source.stat() != remote:
            raise RemoteChangedError("the remote file changed just before the download finished")
        if opts.fsync:
            fd = os.open(cp.temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if not opts.overwrite and os.path.exists(self.destination):
            raise AlreadyExistsError(f"{self.destination} appeared during the download and overwrite is off")
        os.replace(cp.temp_path, self.destination)
        final_event = tracker.finish()
        self.sink.clear()
        return DownloadResult(
            self.source.path,
            self.destination,
            cp.length,
            cp.chunk_count,
            resumed_chunks,
            resumed_bytes,
            cp.length - resumed_bytes,
            self._retries,
            final_event.elapsed_s,
            digest,
            remote.etag,
            restarted,
            tuple(verified),
        )


def _advance_all(hashers: Iterable[_InOrderHasher], index: int, upto: int) -> None:
    for hasher in hashers:
        hasher.advance(index, upto)


class _InOrderHasher:
    """A digest of the result (SHA-256, MD5), computed while it downloads: one thread reads the temp
    file in order, right behind the written prefix of each chunk, on a core the network leaves idle.
    After O_DIRECT writes the reads come from disk (the kernel's readahead keeps ahead of the hash) and
    each range read is dropped from the page cache again, so hashing takes no new page-cache pages."""

    def __init__(
        self, cp: DownloadCheckpoint, stop: threading.Event, direct: bool = False, algorithm: str = "sha256"
    ) -> None:
        self._cp, self._stop, self._algorithm = cp, stop, algorithm
        self._direct = direct and bool(_O_DIRECT) and hasattr(os, "posix_fadvise")
        # end of the written prefix of each chunk that is in progress or done (absolute offsets)
        self._upto = {i: min((i + 1) * cp.chunk_size, cp.length) for i in cp.done_chunks}
        self._cond = threading.Condition()
        self._digest = b""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"download-{algorithm}", daemon=True)
        self._thread.start()

    def advance(self, index: int, upto: int) -> None:
        with self._cond:
            if upto > self._upto.get(index, 0):
                self._upto[index] = upto
                self._cond.notify_all()

    def _available(self, index: int, pos: int) -> int | None:
        """Wait until chunk ``index`` is written beyond ``pos``; its written end, or None once stopped."""
        with self._cond:
            while self._upto.get(index, 0) <= pos:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.2)
            return self._upto[index]

    def _run(self) -> None:
        cp = self._cp
        h = hashlib.new(self._algorithm, usedforsecurity=False)
        buf = memoryview(bytearray(4 * MiB))
        try:
            fd = os.open(cp.temp_path, os.O_RDONLY)
            try:
                for index in range(cp.chunk_count):
                    pos, end = index * cp.chunk_size, min((index + 1) * cp.chunk_size, cp.length)
                    while pos < end:
                        upto = self._available(index, pos)
                        if upto is None:
                            return
                        while pos < upto:
                            n = os.preadv(fd, [buf[: min(len(buf), upto - pos)]], pos)
                            if n == 0:
                                raise FatalError(f"{cp.temp_path} is shorter than expected")
                            h.update(buf[:n])
                            if self._direct:
                                # the bytes went to disk past the page cache: drop what this read brought
                                # in, so the next reads reuse those pages (new ones cost 1-2 s per GiB)
                                os.posix_fadvise(fd, pos, n, os.POSIX_FADV_DONTNEED)
                            pos += n
            finally:
                os.close(fd)
            self._digest = h.digest()
        except BaseException as err:  # noqa: BLE001 - re-raised by result()
            self._error = err

    def result(self) -> bytes:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest
