"""One-way sync of a local tree into a Unity Catalog Volume folder, with SHA-256 change detection.

Volumes keep no content hash, so the sync keeps its own: a **manifest** in the target folder
(``.adt-sync-manifest.json``: relative path -> size, sha256, uploaded_at, the remote modification time
and name), rewritten whole (one PUT, atomic on the server) after each batch of uploads. Deciding what to
send needs no file read when the local hash cache (``engine/tree.py``) knows the file's stat.

What is trusted, and what is not:
- a file the manifest knows, with the same SHA-256 locally, whose remote copy still has the size and
  modification time the manifest recorded: unchanged, skipped;
- a remote copy whose size or modification time differ from the manifest was changed by someone else:
  reported and sent again, never trusted; a remote file the manifest does not know is sent again too.

Mapped fan-out (several workers) writes one manifest **fragment** per batch
(``.adt-sync-manifest.d/<name>.json``) and a final step folds them into the manifest; every sync reads
leftover fragments too, so nothing a finished batch recorded is lost if the merge never ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from airflow_databricks_transfer.engine.checkpoint import SCHEMA, UploadCheckpoint
from airflow_databricks_transfer.engine.errors import (
    AuthError,
    CheckpointError,
    InvalidRequestError,
    RemoteNotFoundError,
    TransferError,
)
from airflow_databricks_transfer.engine.planning import plan_upload
from airflow_databricks_transfer.engine.ports import UploadCheckpointSink, UploadTarget
from airflow_databricks_transfer.engine.progress import (
    ProgressEvent,
    ProgressTracker,
    Subscriber,
    throughput_mib_per_s,
)
from airflow_databricks_transfer.engine.retry import Cancelled
from airflow_databricks_transfer.engine.tree import (
    HashCache,
    LocalFile,
    PathFilter,
    Skipped,
    TreeHasher,
    scan_tree,
)
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions

log = logging.getLogger(__name__)

MANIFEST_NAME = ".adt-sync-manifest.json"
FRAGMENTS_DIR = ".adt-sync-manifest.d"
MANIFEST_KIND = "volume_sync.manifest"
MANIFEST_VERSION = 1

Naming = Literal["mirror", "content"]
Reason = Literal["new", "changed", "remote changed", "remote missing", "remote unknown", "forced"]


# ---------------------------------------------------------------------------------------- remote port
@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime_ms: int | None


class VolumeTree(Protocol):
    """What the sync needs of a Volume (``clients/volume_tree.py`` implements it over the Files API)."""

    def list_files(self, folder: str, *, recursive: bool = True) -> dict[str, RemoteFile]:
        """The files under ``folder`` by path relative to it; {} if the folder is missing."""
        ...

    def read_small(self, path: str) -> bytes | None: ...

    def write_small(self, path: str, data: bytes) -> None: ...

    def delete_file(self, path: str) -> None: ...

    def upload_target(self, path: str) -> UploadTarget: ...

    def check_writable_root(self, folder: str) -> None:
        """Raise a clear error when ``folder``'s volume does not exist."""
        ...


class FileCheckpoints(Protocol):
    """Per-file upload checkpoints (the task state store in Airflow, a state folder for the CLI)."""

    def load(self, rel: str) -> tuple[UploadCheckpoint | None, str | None]: ...

    def sink(self, rel: str) -> UploadCheckpointSink: ...


# ---------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestEntry:
    size: int
    sha256: str
    uploaded_at: float
    remote_mtime_ms: int | None
    remote: str  # the remote name relative to the target (differs from the key with content naming)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "uploaded_at": round(self.uploaded_at, 3),
            "remote_mtime_ms": self.remote_mtime_ms,
            "remote": self.remote,
        }


@dataclass
class Manifest:
    files: dict[str, ManifestEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": SCHEMA,
                "kind": MANIFEST_KIND,
                "version": MANIFEST_VERSION,
                "files": {rel: e.to_dict() for rel, e in sorted(self.files.items())},
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse a manifest; anything else (corrupt, foreign, newer) is a CheckpointError."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"the sync manifest is not JSON ({err})") from err
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or raw.get("kind") != MANIFEST_KIND:
            raise CheckpointError("the file is not a sync manifest of this package")
        version = raw.get("version")
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise CheckpointError(f"the sync manifest has version {version!r}; this package reads 1")
        files = raw.get("files")
        if not isinstance(files, dict):
            raise CheckpointError("the sync manifest has no file table")
        out = cls()
        try:
            for rel, e in files.items():
                mtime = e.get("remote_mtime_ms")
                out.files[str(rel)] = ManifestEntry(
                    int(e["size"]),
                    str(e["sha256"]),
                    float(e["uploaded_at"]),
                    None if mtime is None else int(mtime),
                    str(e.get("remote") or rel),
                )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"a sync manifest entry is malformed ({err!r})") from err
        return out

    def merge(self, other: Manifest) -> None:
        """Fold ``other`` in; for a path both know, the later upload wins."""
        for rel, e in other.files.items():
            mine = self.files.get(rel)
            if mine is None or e.uploaded_at >= mine.uploaded_at:
                self.files[rel] = e


# ------------------------------------------------------------------------------ options, plan, result
@dataclass(frozen=True)
class SyncOptions:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_hidden: bool = True
    skip_temporary: bool = True
    naming: Naming = "mirror"
    force_upload: bool = False
    delete_removed: bool = False
    #: files uploaded at once (the seed's default); each large one also runs ``upload.parallelism`` parts
    concurrency: int = 5
    #: one bound shared by every file's part buffers (a large file is given fewer workers to fit)
    memory_limit_bytes: int = 512 * 1024 * 1024
    hash_threads: int = 4
    #: the manifest is rewritten after this many uploads or this many seconds, whichever comes first
    manifest_every_files: int = 1000
    manifest_every_s: float = 30.0
    upload: UploadOptions = field(default_factory=lambda: UploadOptions(progress_interval_s=3600.0))
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= 64:
            raise ValueError("concurrency must be in 1..64")
        if self.naming not in ("mirror", "content"):
            raise ValueError("naming must be 'mirror' or 'content'")
        if self.memory_limit_bytes < 1024 * 1024:
            raise ValueError("memory_limit_bytes must be at least 1 MiB")
        if self.manifest_every_files < 1 or self.manifest_every_s < 0:
            raise ValueError("manifest_every_files must be >= 1 and manifest_every_s >= 0")
        self.path_filter  # noqa: B018 - checks the patterns now, not at the first file

    @property
    def path_filter(self) -> PathFilter:
        return PathFilter(self.include, self.exclude, self.skip_hidden, self.skip_temporary)


@dataclass(frozen=True)
class SyncAction:
    rel: str
    remote: str  # relative to the target folder
    reason: Reason
    size: int
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.rel, "remote": self.remote, "reason": self.reason, "size": self.size}


@dataclass
class SyncPlan:
    """What a run will do; built without sending anything (a dry run stops here)."""

    uploads: list[SyncAction]
    deletes: list[str]  # remote names relative to the target
    unchanged: int
    remote_changed: list[str]
    skipped: list[Skipped]
    refused: list[Skipped]
    files: dict[str, LocalFile]
    manifest: Manifest
    #: leftover fragments folded into ``manifest`` (a non-mapped run writes them in, then deletes them)
    fragments: list[str] = field(default_factory=list)

    @property
    def bytes_to_upload(self) -> int:
        return sum(a.size for a in self.uploads)

    def batches(self, count: int) -> list[list[str]]:
        """The uploads split into at most ``count`` batches of about equal bytes (largest first)."""
        count = max(1, min(count, len(self.uploads))) if self.uploads else 0
        bins: list[tuple[int, list[str]]] = [(0, []) for _ in range(count)]
        for a in sorted(self.uploads, key=lambda a: (-a.size, a.rel)):
            i = min(range(count), key=lambda k: (bins[k][0], len(bins[k][1])))
            bins[i] = (bins[i][0] + a.size, [*bins[i][1], a.rel])
        return [sorted(b) for _, b in bins]


@dataclass(frozen=True)
class SyncFailure:
    path: str
    reason: str
    error: str  # the error type, e.g. AuthError

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "error": self.error}


@dataclass
class SyncResult:
    target: str
    dry_run: bool
    uploaded: int = 0
    skipped: int = 0  # unchanged files
    failed: int = 0
    deleted: int = 0
    bytes_uploaded: int = 0
    bytes_resumed: int = 0
    seconds: float = 0.0
    files_hashed: int = 0
    bytes_hashed: int = 0
    hash_cache_hits: int = 0
    failures: list[SyncFailure] = field(default_factory=list)
    actions: list[SyncAction] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    remote_changed: list[str] = field(default_factory=list)
    refused: list[Skipped] = field(default_factory=list)
    files_skipped_by_filter: int = 0

    @property
    def files_per_s(self) -> float:
        return self.uploaded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, *, max_listed: int = 200) -> dict[str, Any]:
        """A JSON-able summary; long lists are cut to ``max_listed`` (XCom and logs stay small)."""
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "failed": self.failed,
            "deleted": self.deleted,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_resumed": self.bytes_resumed,
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_per_s, 1),
            "mib_per_s": round(throughput_mib_per_s(self.bytes_uploaded, self.seconds), 1),
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "hash_cache_hits": self.hash_cache_hits,
            "failures": [f.to_dict() for f in self.failures[:max_listed]],
            "actions": [a.to_dict() for a in self.actions[:max_listed]],
            "deletes": self.deletes[:max_listed],
            "remote_changed": self.remote_changed[:max_listed],
            "refused": [{"path": s.rel, "reason": s.reason} for s in self.refused[:max_listed]],
            "files_skipped_by_filter": self.files_skipped_by_filter,
        }


def content_name(rel: str, sha256: str) -> str:
    """The seed's content-addressed name: ``dir/name_<first 16 hex of sha256>.ext``."""
    folder, name = posixpath.split(rel)
    stem, ext = posixpath.splitext(name)
    if not stem:  # ".bashrc"-like names have no extension
        stem, ext = name, ""
    return posixpath.join(folder, f"{stem}_{sha256[:16]}{ext}")


def check_volume_folder(path: str) -> str:
    """``/Volumes/<catalog>/<schema>/<volume>[/...]`` without ``..`` or empty segments, no trailing '/'."""
    clean = path.rstrip("/")
    parts = clean.split("/")
    if len(parts) < 5 or parts[0] != "" or parts[1] != "Volumes":
        raise InvalidRequestError(
            f"{path!r} is not a Volume folder: expected /Volumes/<catalog>/<schema>/<volume>[/<folder>]"
        )
    if any(p in ("", ".", "..") for p in parts[2:]):
        raise InvalidRequestError(f"{path!r} has an empty, '.' or '..' segment")
    return clean


def _inside_target(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


# ---------------------------------------------------------------------------------------- the sync
class VolumeSync:
    """Sync ``local_root`` into the Volume folder ``target``.

    Not reusable: build one per run. ``cancel()`` (from another thread, e.g. Airflow's on_kill) stops
    the file workers within seconds; finished files are in the manifest, the large file in flight keeps
    its checkpoint.
    """

    def __init__(
        self,
        remote: VolumeTree,
        local_root: str | os.PathLike[str],
        target: str,
        options: SyncOptions | None = None,
        *,
        hash_cache: HashCache | None = None,
        checkpoints: FileCheckpoints | None = None,
        subscribers: list[Subscriber] | None = None,
        file_subscribers: Callable[[str], list[Subscriber]] | None = None,
        fragment: str | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        """``only``: sync just these relative paths (a mapped batch; no deletes); ``fragment``: write this
        run's manifest updates to a fragment of that name instead of the manifest itself (batches that
        run at once never overwrite each other's records)."""
        self.remote = remote
        self.local_root = os.fspath(local_root)
        self.target = check_volume_folder(target)
        self.options = options or SyncOptions()
        self.hasher = TreeHasher(
            os.path.realpath(self.local_root), hash_cache, threads=self.options.hash_threads
        )
        self.checkpoints = checkpoints
        self.subscribers = subscribers or []
        self.file_subscribers = file_subscribers
        if fragment is not None and (not fragment or "/" in fragment or fragment.startswith(".")):
            raise InvalidRequestError(f"invalid manifest fragment name {fragment!r}")
        self.fragment = fragment
        self.only = None if only is None else frozenset(only)
        self._stop = threading.Event()
        self._active: dict[str, Uploader] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> str:
        return f"{self.target}/{MANIFEST_NAME}"

    def _fragment_path(self, name: str) -> str:
        return f"{self.target}/{FRAGMENTS_DIR}/{name}.json"

    def cancel(self) -> None:
        self._stop.set()
        with self._lock:
            active = list(self._active.values())
        for uploader in active:
            uploader.cancel()

    # ------------------------------------------------------------------ manifest I/O
    def load_manifest(self, listing: Mapping[str, RemoteFile] | None = None) -> tuple[Manifest, list[str]]:
        """The manifest with any leftover fragments folded in, and the fragment names found.

        A corrupt or foreign manifest is not fatal: it is reported, and every file is sent again.
        """
        manifest = Manifest()
        data = self.remote.read_small(self.manifest_path)
        if data is not None:
            try:
                manifest = Manifest.from_json(data)
            except CheckpointError as err:
                log.warning("Ignoring %s (%s): every file is compared as new", self.manifest_path, err)
        fragments = sorted(
            rel.split("/", 1)[1][: -len(".json")]
            for rel in (listing or {})
            if rel.startswith(f"{FRAGMENTS_DIR}/") and rel.endswith(".json") and rel.count("/") == 1
        )
        for name in fragments:
            raw = self.remote.read_small(self._fragment_path(name))
            if raw is None:
                continue
            try:
                manifest.merge(Manifest.from_json(raw))
            except CheckpointError as err:
                log.warning("Ignoring manifest fragment %s (%s)", name, err)
        return manifest, fragments

    def _write(self, manifest: Manifest) -> None:
        path = self.manifest_path if self.fragment is None else self._fragment_path(self.fragment)
        self.remote.write_small(path, manifest.to_json().encode())

    # ------------------------------------------------------------------ plan
    def plan(self) -> SyncPlan:
        """Scan, hash what the cache does not know, list the target and decide every file's fate."""
        opts = self.options
        self.remote.check_writable_root(self.target)
        scan = scan_tree(self.local_root, opts.path_filter)
        listing = self.remote.list_files(self.target)
        manifest, fragments = self.load_manifest(listing)
        reserved = [f for f in scan.files if f.rel == MANIFEST_NAME or f.rel.startswith(f"{FRAGMENTS_DIR}/")]
        for f in reserved:  # only reachable with skip_hidden=False: never overwrite the bookkeeping
            scan.refused.append(Skipped(f.rel, "name reserved for the sync's manifest"))
        scan.files = [f for f in scan.files if f not in reserved]
        if self.only is not None:
            scan.files = [f for f in scan.files if f.rel in self.only]
        files = {f.rel: f for f in scan.files}
        # a hash is needed for files the manifest knows with the same size (content check) and for every
        # file to upload (recorded in the manifest; with content naming, the remote name)
        need = [
            f
            for f in scan.files
            if opts.force_upload
            or opts.naming == "content"
            or f.rel not in manifest.files
            or manifest.files[f.rel].size == f.size
        ]
        if need:
            log.info(
                "Hashing %d files (%d bytes; cached hashes are reused)", len(need), sum(f.size for f in need)
            )
        hashes = self.hasher.hashes(need, use_cache=not opts.force_upload)
        uploads: list[SyncAction] = []
        remote_changed: list[str] = []
        unchanged = 0
        wanted: set[str] = set()
        for f in scan.files:
            sha = hashes.get(f.rel)
            m = manifest.files.get(f.rel)
            name = content_name(f.rel, sha) if opts.naming == "content" and sha else f.rel
            wanted.add(name)
            r = listing.get(name)
            reason: Reason | None
            if opts.force_upload:
                reason = "forced"
            elif m is None:
                reason = "new" if r is None else "remote unknown"
            elif m.remote != name or m.size != f.size or (sha is not None and sha != m.sha256):
                reason = "changed"
            elif r is None:
                reason = "remote missing"
            elif r.size != m.size or r.mtime_ms != m.remote_mtime_ms:
                reason = "remote changed"
                remote_changed.append(f.rel)
            else:
                reason = None
            if reason is None:
                unchanged += 1
            else:
                uploads.append(SyncAction(f.rel, name, reason, f.size, sha))
        for rel in remote_changed:
            log.warning(
                "%s/%s was changed on the Volume since this sync wrote it (size or modification time "
                "differ from the manifest); sending it again",
                self.target,
                rel,
            )
        deletes: list[str] = []
        if opts.delete_removed and self.only is None:
            deletes = self._deletes(listing, manifest, wanted, set(files))
        return SyncPlan(
            uploads,
            deletes,
            unchanged,
            remote_changed,
            scan.skipped,
            scan.refused,
            files,
            manifest,
            fragments,
        )

    def _deletes(
        self, listing: Mapping[str, RemoteFile], manifest: Manifest, wanted: set[str], local: set[str]
    ) -> list[str]:
        """Remote files with no local counterpart: never sync bookkeeping, never outside the target.

        Mirror naming: any remote file the filter would take. Content naming: the names the manifest
        recorded (other files in the folder are not this sync's to delete).
        """
        flt = self.options.path_filter
        ours = {e.remote for e in manifest.files.values()}
        out = []
        for rel in sorted(listing):
            if rel in wanted or not _inside_target(rel):
                continue
            if rel == MANIFEST_NAME or rel.startswith(f"{FRAGMENTS_DIR}/"):
                continue
            if self.options.naming == "content":
                if rel in ours:
                    out.append(rel)
            elif flt.skip_reason(rel) is None and rel not in local:
                out.append(rel)
        return out

    # ------------------------------------------------------------------ run
    def run(self, plan: SyncPlan | None = None, *, dry_run: bool = False) -> SyncResult:
        """Plan (unless given), then upload, record and delete."""
        started = time.monotonic()
        plan = plan or self.plan()
        uploads = plan.uploads
        result = SyncResult(self.target, dry_run)
        result.actions = list(uploads)
        result.deletes = list(plan.deletes)
        result.remote_changed = list(plan.remote_changed)
        result.refused = list(plan.refused)
        result.skipped = plan.unchanged
        result.files_skipped_by_filter = len(plan.skipped)
        for s in plan.refused:
            result.failures.append(SyncFailure(s.rel, s.reason, "Refused"))
        result.failed = len(result.failures)
        if dry_run:
            self._finish(result, started)
            return result
        manifest = plan.manifest if self.fragment is None else Manifest()
        recorder = _ManifestRecorder(self, manifest, plan)
        try:
            self._upload_all(uploads, plan, result, recorder)
        finally:
            recorder.flush(final=True)
        if plan.fragments and self.fragment is None and not self._stop.is_set():
            self._absorb_fragments(manifest, plan.fragments)
        if not self._stop.is_set():
            for rel in result.deletes:
                try:
                    self.remote.delete_file(f"{self.target}/{rel}")
                    result.deleted += 1
                except RemoteNotFoundError:
                    result.deleted += 1
                except TransferError as err:
                    result.failures.append(SyncFailure(rel, f"delete failed: {err}", type(err).__name__))
                    result.failed += 1
            if result.deleted and self.fragment is None:
                removed = set(result.deletes)
                for rel, e in list(manifest.files.items()):
                    if e.remote in removed and rel not in plan.files:
                        del manifest.files[rel]
                self._write(manifest)
        changed = self.hasher.settle_racy()
        for rel in changed:
            # written while the sync ran: the copy sent may be older; the next run sends it again
            manifest.files.pop(rel, None)
            result.failures.append(
                SyncFailure(rel, "changed while the sync ran; run it again", "SourceChanged")
            )
            result.failed += 1
        if changed:
            self._write(manifest)
        self._finish(result, started)
        if self._stop.is_set():
            raise Cancelled("sync cancelled")
        return result

    def _absorb_fragments(self, manifest: Manifest, fragments: list[str]) -> None:
        """Leftover fragments were read into ``manifest``: write it, then delete them."""
        self._write(manifest)
        for name in fragments:
            with contextlib.suppress(RemoteNotFoundError):
                self.remote.delete_file(self._fragment_path(name))

    def _finish(self, result: SyncResult, started: float) -> None:
        result.seconds = time.monotonic() - started
        st = self.hasher.stats
        result.files_hashed, result.bytes_hashed, result.hash_cache_hits = (
            st.files_hashed,
            st.bytes_hashed,
            st.cache_hits,
        )

    def _upload_all(
        self, uploads: list[SyncAction], plan: SyncPlan, result: SyncResult, recorder: _ManifestRecorder
    ) -> None:
        if not uploads:
            return
        opts = self.options
        total = sum(a.size for a in uploads)
        tracker = ProgressTracker(
            f"sync to {self.target}",
            total,
            len(uploads),
            subscribers=self.subscribers,
            interval_s=opts.progress_interval_s,
            unit="file",
        )
        gate = _MemoryGate(opts.memory_limit_bytes)
        # The large (multipart) files start first, largest first, so the longest uploads do not end the
        # run alone; small files fill the other slots (a file that does not fit the memory left waits,
        # the next that fits goes ahead of it). Small files go in path order, so each manifest batch
        # touches few folders: their modification times come from one listing per folder.
        threshold = opts.upload.multipart_threshold_bytes
        pending = sorted(uploads, key=lambda a: (0, -a.size, a.rel) if a.size >= threshold else (1, 0, a.rel))
        # files have no identity across tries: the in-flight set holds this plan's order (a count for the UI)
        ids = {a.rel: i for i, a in enumerate(pending)}
        cond = threading.Condition()
        lock = threading.Lock()

        def take() -> tuple[SyncAction, int, UploadOptions] | None:
            with cond:
                while pending and not self._stop.is_set():
                    for i, a in enumerate(pending):
                        need, file_opts = self._reservation(a)
                        if gate.try_take(need):
                            del pending[i]
                            return a, need, file_opts
                    cond.wait(0.5)
                return None

        def worker() -> None:
            while True:
                item = take()
                if item is None:
                    return
                action, need, file_opts = item
                tracker.begin(ids[action.rel])
                try:
                    self._upload_one(
                        action, plan.files[action.rel], file_opts, tracker, result, recorder, lock
                    )
                finally:
                    tracker.end(ids[action.rel])
                    with cond:
                        gate.give(need)
                        cond.notify_all()

        threads = [
            threading.Thread(target=worker, name=f"sync-{i}", daemon=True)
            for i in range(min(opts.concurrency, len(uploads)))
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            self.cancel()
            for t in threads:
                t.join(timeout=60)
            raise
        tracker.finish()

    def _reservation(self, action: SyncAction) -> tuple[int, UploadOptions]:
        """Bytes of part buffers this file holds, and its options (fewer part workers to fit the limit)."""
        up = self.options.upload
        plan = plan_upload(
            action.size,
            up.limits,
            part_size=up.part_size_bytes,
            multipart_threshold=up.multipart_threshold_bytes,
        )
        if plan.mode == "single":
            return 0, up  # sent straight from the file, in small pieces
        workers = max(
            1, min(up.parallelism, self.options.memory_limit_bytes // plan.part_size, plan.part_count)
        )
        return workers * plan.part_size, replace(up, parallelism=workers)

    def _upload_one(
        self,
        action: SyncAction,
        local: LocalFile,
        file_opts: UploadOptions,
        tracker: ProgressTracker,
        result: SyncResult,
        recorder: _ManifestRecorder,
        lock: threading.Lock,
    ) -> None:
        remote_path = f"{self.target}/{action.remote}"
        multipart = action.size >= file_opts.multipart_threshold_bytes
        checkpoint = None
        sink: UploadCheckpointSink | None = None
        if self.checkpoints is not None and multipart:
            checkpoint, discarded = self.checkpoints.load(action.rel)
            if discarded:
                log.warning("%s: ignoring its checkpoint (%s)", action.rel, discarded)
            sink = self.checkpoints.sink(action.rel)
        seen = {"sent": 0, "resumed": 0}

        def feed(event: ProgressEvent) -> None:
            # the file's resumed bytes count as resumed in the sync's total too (not in its rate)
            if event.bytes_resumed > seen["resumed"]:
                tracker.resumed(event.bytes_resumed - seen["resumed"])
                seen["resumed"] = event.bytes_resumed
            delta = event.bytes_sent - seen["sent"]
            seen["sent"] = event.bytes_sent
            if delta:
                tracker.add(delta)

        subs = [feed, *(self.file_subscribers(action.rel) if self.file_subscribers else [])]
        try:
            if self._stop.is_set():
                raise Cancelled("sync cancelled")
            uploader = Uploader(
                self.remote.upload_target(remote_path),
                local.path,
                replace(file_opts, progress_interval_s=min(file_opts.progress_interval_s, 1.0)),
                sink=sink,
                subscribers=subs,
            )
            with self._lock:
                self._active[action.rel] = uploader
            try:
                res = uploader.run(checkpoint)
            finally:
                with self._lock:
                    self._active.pop(action.rel, None)
            after = os.stat(local.path)
            if not local.same_stat(after):
                raise _ChangedDuringSync("the file changed after it was hashed; run the sync again")
        except Cancelled:
            return
        except (TransferError, OSError, _ChangedDuringSync) as err:
            reason = str(err) or type(err).__name__
            log.error("%s: upload failed: %s", action.rel, reason)
            with lock:
                result.failed += 1
                result.failures.append(SyncFailure(action.rel, reason, type(err).__name__))
            if isinstance(err, AuthError):
                self._stop.set()  # every other file would fail the same way
            return
        tracker.add(max(0, action.size - seen["sent"] - seen["resumed"]), part_done=True)
        with lock:
            result.uploaded += 1
            result.bytes_uploaded += res.bytes_sent
            result.bytes_resumed += res.bytes_resumed
        sha = action.sha256
        if sha is None:  # only files the manifest knew with another size are planned without a hash
            sha = self.hasher.hashes([local]).get(local.rel)
        if sha is not None:
            recorder.add(action.rel, ManifestEntry(local.size, sha, time.time(), None, action.remote))


class _ChangedDuringSync(Exception):
    pass


class _MemoryGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_take(self, n: int) -> bool:
        if n and self.used and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class _ManifestRecorder:
    """Collects finished uploads; fills their remote modification times from a listing of their
    folders and rewrites the manifest (or the fragment) after each batch."""

    def __init__(self, sync: VolumeSync, manifest: Manifest, plan: SyncPlan) -> None:
        self.sync = sync
        self.manifest = manifest
        self.plan = plan
        self._pending: dict[str, ManifestEntry] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._last = time.monotonic()

    def add(self, rel: str, entry: ManifestEntry) -> None:
        opts = self.sync.options
        with self._lock:
            self._pending[rel] = entry
            due = len(self._pending) >= opts.manifest_every_files or (
                time.monotonic() - self._last >= opts.manifest_every_s
            )
        if due:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._last = time.monotonic()
            if not batch and not final:
                return
            if batch:
                times = self._remote_times({e.remote for e in batch.values()})
                for rel, e in batch.items():
                    r = times.get(e.remote)
                    # the listing shows what is there now: trust its time only for our size
                    mtime = r.mtime_ms if r is not None and r.size == e.size else None
                    self.manifest.files[rel] = replace(e, remote_mtime_ms=mtime)
            if batch:
                try:
                    self.sync._write(self.manifest)
                except TransferError as err:
                    if final:
                        raise
                    log.warning(
                        "Could not write the sync manifest yet (%s); retrying after the next batch", err
                    )
                    with self._lock:
                        self._pending = {**batch, **self._pending}

    def _remote_times(self, names: set[str]) -> dict[str, RemoteFile]:
        """The listed size and time of ``names``; the folders are listed ``concurrency`` at a time (one
        after another, a batch spread over 100 folders waits 100 round trips)."""
        folders = sorted({posixpath.dirname(n) for n in names})

        def listing(folder: str) -> tuple[str, dict[str, RemoteFile]]:
            base = f"{self.sync.target}/{folder}" if folder else self.sync.target
            try:
                return folder, self.sync.remote.list_files(base, recursive=False)
            except TransferError as err:
                log.warning("Could not list %s for modification times (%s)", base, err)
                return folder, {}

        workers = min(self.sync.options.concurrency, len(folders))
        if workers <= 1:
            listings = [listing(f) for f in folders]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync-list") as pool:
                listings = list(pool.map(listing, folders))
        out: dict[str, RemoteFile] = {}
        for folder, listed in listings:
            for rel, r in listed.items():
                full = f"{folder}/{rel}" if folder else rel
                if full in names:
                    out[full] = r
        return out


# ---------------------------------------------------------------------------------------- fan-out
def merge_fragments(remote: VolumeTree, target: str) -> dict[str, int]:
    """Fold every manifest fragment into the manifest, write it, then delete the fragments.

    Safe to run again after a failure: a fragment is deleted only after the manifest holding it is
    written, and merging one twice changes nothing.
    """
    sync = VolumeSync(remote, ".", target)
    listing = remote.list_files(f"{sync.target}/{FRAGMENTS_DIR}")
    manifest, fragments = sync.load_manifest({f"{FRAGMENTS_DIR}/{k}": v for k, v in listing.items()})
    if fragments:
        sync._absorb_fragments(manifest, fragments)
    return {"fragments": len(fragments), "files": len(manifest.files)}


def plan_batches(plan: SyncPlan, count: int) -> list[list[str]]:
    """The changed files in ``count`` batches balanced by bytes, for a mapped task (``.expand``)."""
    return plan.batches(count)


def describe(result: SyncResult) -> str:
    """One line for logs and the CLI."""
    verb = "would upload" if result.dry_run else "uploaded"
    return (
        f"sync to {result.target}: {verb} {len(result.actions) if result.dry_run else result.uploaded} files"
        f" ({result.bytes_uploaded} bytes), {result.skipped} unchanged, {result.failed} failed,"
        f" {len(result.deletes) if result.dry_run else result.deleted} deleted"
        f", {result.seconds:.1f} s ({result.files_per_s:.1f} files/s)"
    )
