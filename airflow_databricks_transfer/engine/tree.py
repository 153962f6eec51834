"""A local directory tree as the sync sees it: which files, under which relative names, with what SHA-256.

Three concerns a one-way sync gets wrong easily, kept here together:

- **Selection**: include and exclude globs on POSIX paths relative to the root (a pattern without ``/``
  matches a name at any depth, like ``.gitignore``; ``**`` crosses folders), hidden names and the
  partial or temporary files of editors and of transfers skipped by default.
- **Containment**: nothing outside the root is ever read. A symlink is followed only when its target
  resolves inside the root; one that escapes is refused and reported, and symlinked folders are not
  descended (no loops, no second copies).
- **Hashing once**: a SQLite cache keyed by (root, path) remembers the SHA-256 of a file for its
  (size, mtime_ns, inode). An unchanged tree is not read again. An entry hashed in the same clock tick
  as the file's last write is "racy" (a write later in that tick keeps the mtime) and is not trusted
  until it is hashed again once the tick is over (git's racy-clean rule).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from airflow_databricks_transfer.engine.errors import InvalidRequestError

#: names skipped unless ``skip_temporary=False``: partial downloads of this package and of others, and
#: the temporary and lock files of common editors (vim, emacs, Office)
TEMPORARY_PATTERNS: tuple[str, ...] = ("*.partial", "*.adt-partial", "*~", "#*#", "~$*", "*.swp", "*.swo")

#: a write in the same tick as the hash keeps the mtime: entries hashed within this much of the file's
#: mtime are re-hashed before they are trusted (Linux file timestamps move in jiffies, <= 10 ms)
RACY_WINDOW_NS = 20_000_000

_READ_BYTES = 1024 * 1024
#: seconds between "hashed X of Y" lines while a large tree is read
HASH_PROGRESS_INTERVAL_S = 10.0

log = logging.getLogger(__name__)


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one folder, ``**/`` spans any number of them (zero included)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _names_regex(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regex for several name patterns (no '/'): a tree of 100,000 files is matched once per name."""
    return re.compile("|".join(f"(?:{_glob_regex(p).pattern})" for p in patterns), re.DOTALL)


def glob_match(pattern: str, rel: str) -> bool:
    """Whether relative POSIX path ``rel`` matches ``pattern`` (see the module docstring)."""
    pattern = pattern.strip()
    if pattern.startswith("/"):
        return bool(_glob_regex(pattern.lstrip("/")).match(rel))
    if "/" not in pattern.rstrip("/"):
        return bool(_glob_regex(pattern.rstrip("/")).match(rel.rsplit("/", 1)[-1]))
    return bool(_glob_regex(pattern.rstrip("/")).match(rel))


_TEMPORARY = _names_regex(TEMPORARY_PATTERNS)


@dataclass(frozen=True)
class PathFilter:
    """Which relative paths a sync takes. No include pattern means every file."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_hidden: bool = True
    skip_temporary: bool = True

    def __post_init__(self) -> None:
        for p in (*self.include, *self.exclude):
            if not p.strip():
                raise InvalidRequestError("an include or exclude pattern is empty")
            if ".." in p.strip("/").split("/"):
                raise InvalidRequestError(f"pattern {p!r} has a '..' segment: patterns match inside the root")

    def skip_reason(self, rel: str, *, is_dir: bool = False) -> str | None:
        """Why ``rel`` is left out, or None when it is taken (folders: whether to descend)."""
        name = rel.rsplit("/", 1)[-1]
        if self.skip_hidden and name.startswith("."):
            return "hidden"
        if self.skip_temporary and not is_dir and _TEMPORARY.match(name):
            return "temporary or partial file"
        for p in self.exclude:
            if glob_match(p, rel):
                return f"excluded by {p!r}"
        if is_dir or not self.include:
            return None
        if any(glob_match(p, rel) for p in self.include):
            return None
        return "not matched by any include pattern"


@dataclass(frozen=True)
class LocalFile:
    rel: str  # POSIX path relative to the root
    path: str  # absolute path to read (a symlink's own path; its target is inside the root)
    size: int
    mtime_ns: int
    inode: int

    def same_stat(self, other: os.stat_result) -> bool:
        return (other.st_size, other.st_mtime_ns, other.st_ino) == (self.size, self.mtime_ns, self.inode)


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str


@dataclass
class TreeScan:
    root: str
    files: list[LocalFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: paths refused for safety (a symlink escaping the root, a name that is not UTF-8)
    refused: list[Skipped] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan_tree(root: str | os.PathLike[str], path_filter: PathFilter | None = None) -> TreeScan:
    """Every regular file under ``root`` that the filter takes, in path order."""
    flt = path_filter or PathFilter()
    top = os.path.realpath(root)
    if not os.path.isdir(top):
        raise InvalidRequestError(f"{os.fspath(root)} is not a directory")
    scan = TreeScan(top)
    stack = [("", top)]
    while stack:
        prefix, folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError as err:
            scan.refused.append(Skipped(prefix or ".", f"cannot list: {err.strerror}"))
            continue
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                scan.refused.append(Skipped(rel.encode("utf-8", "replace").decode(), "name is not UTF-8"))
                continue
            if entry.is_symlink():
                _symlink(scan, flt, top, rel, entry)
                continue
            if entry.is_dir(follow_symlinks=False):
                if flt.skip_reason(rel, is_dir=True) is None:
                    stack.append((f"{rel}/", entry.path))
                else:
                    scan.skipped.append(Skipped(rel + "/", str(flt.skip_reason(rel, is_dir=True))))
                continue
            if not entry.is_file(follow_symlinks=False):
                scan.skipped.append(Skipped(rel, "not a regular file"))
                continue
            _take(scan, flt, rel, entry.path, entry.stat(follow_symlinks=False))
    scan.files.sort(key=lambda f: f.rel)
    return scan


def _symlink(scan: TreeScan, flt: PathFilter, top: str, rel: str, entry: os.DirEntry[str]) -> None:
    target = os.path.realpath(entry.path)
    if not _inside(target, top):
        scan.refused.append(Skipped(rel, "symlink points outside the root"))
        return
    try:
        st = os.stat(target)
    except OSError:
        scan.skipped.append(Skipped(rel, "broken symlink"))
        return
    if stat.S_ISDIR(st.st_mode):
        scan.skipped.append(Skipped(rel + "/", "symlink to a folder (not followed)"))
    elif stat.S_ISREG(st.st_mode):
        _take(scan, flt, rel, entry.path, st)
    else:
        scan.skipped.append(Skipped(rel, "not a regular file"))


def _take(scan: TreeScan, flt: PathFilter, rel: str, path: str, st: os.stat_result) -> None:
    reason = flt.skip_reason(rel)
    if reason is not None:
        scan.skipped.append(Skipped(rel, reason))
        return
    scan.files.append(LocalFile(rel, path, st.st_size, st.st_mtime_ns, st.st_ino))


def sha256_of(path: str) -> tuple[str, int]:
    """(hex SHA-256, bytes read) of a file, read in 1 MiB pieces (hashlib releases the GIL)."""
    h = hashlib.sha256()
    n = 0
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                break
            h.update(view[:got])
            n += got
    return h.hexdigest(), n


class HashCache:
    """SHA-256 per (root, rel) for a (size, mtime_ns, inode), in SQLite (safe across processes)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        """``path`` None keeps the cache in memory (one run only). A cache file that cannot be opened
        (read-only or full disk, a corrupt file) is not fatal: the run hashes without it, and says so."""
        self._lock = threading.Lock()
        self.path = None if path is None else os.fspath(path)
        try:
            self._db = self._open(self.path)
        except (OSError, sqlite3.Error) as err:
            log.warning("Hash cache %s unusable (%s): hashing without a cache this run", self.path, err)
            self.path = None
            self._db = self._open(None)

    @staticmethod
    def _open(path: str | None) -> sqlite3.Connection:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(":memory:" if path is None else path, check_same_thread=False, timeout=30.0)
        try:
            with db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS hashes (root TEXT, rel TEXT, size INTEGER, mtime_ns INTEGER,"
                    " inode INTEGER, sha256 TEXT, hashed_ns INTEGER, PRIMARY KEY (root, rel))"
                )
                db.execute("SELECT count(*) FROM hashes").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def lookup(self, root: str, files: Sequence[LocalFile]) -> dict[str, str]:
        """{rel: sha256} of the files whose cached entry matches their stat and is not racy."""
        found: dict[str, str] = {}
        by_rel = {f.rel: f for f in files}
        with self._lock:
            rows = self._db.execute(
                "SELECT rel, size, mtime_ns, inode, sha256, hashed_ns FROM hashes WHERE root = ?", (root,)
            ).fetchall()
        for rel, size, mtime_ns, inode, sha, hashed_ns in rows:
            f = by_rel.get(rel)
            if f is None or (f.size, f.mtime_ns, f.inode) != (size, mtime_ns, inode):
                continue
            if hashed_ns - mtime_ns < RACY_WINDOW_NS:
                continue
            found[rel] = sha
        return found

    def store(self, root: str, entries: Iterable[tuple[LocalFile, str, int]]) -> None:
        """Remember (file, sha256, when hashing began in ns)."""
        rows = [(root, f.rel, f.size, f.mtime_ns, f.inode, sha, at) for f, sha, at in entries]
        if not rows:
            return
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as err:  # a full disk: the next run hashes these again, nothing worse
            log.warning("Could not update the hash cache %s (%s)", self.path, err)

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class HashStats:
    files_hashed: int = 0
    bytes_hashed: int = 0
    cache_hits: int = 0


class TreeHasher:
    """SHA-256 of many files: from the cache when it can, else read on a few threads and remembered.

    Every file read is counted (``stats``), so a no-change re-sync can prove it read nothing.
    """

    def __init__(self, root: str, cache: HashCache | None = None, *, threads: int = 4) -> None:
        self.root = root
        self.cache = cache or HashCache(None)
        self.threads = threads
        self.stats = HashStats()
        self._lock = threading.Lock()
        self._racy: dict[str, tuple[LocalFile, str]] = {}

    def hashes(self, files: Sequence[LocalFile], *, use_cache: bool = True) -> dict[str, str]:
        """{rel: sha256}; a file written while it was read is left out (no trustworthy digest yet).

        ``use_cache=False`` reads every file (a forced sync trusts nothing it has not just read).
        """
        known = self.cache.lookup(self.root, files) if use_cache else {}
        with self._lock:
            self.stats.cache_hits += len(known)
        todo = [f for f in files if f.rel not in known]
        if not todo:
            return known
        fresh: list[tuple[LocalFile, str, int]] = []
        total = sum(f.size for f in todo)
        started = last = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(todo)))) as pool:
            for i, item in enumerate(pool.map(self._hash_one, todo), 1):
                if item is not None:
                    fresh.append(item)
                now = time.monotonic()
                if now - last >= HASH_PROGRESS_INTERVAL_S:
                    last = now
                    done = self.stats.bytes_hashed
                    log.info(
                        "Hashed %d of %d files (%.1f of %.1f MiB, %.0f MiB/s)",
                        i,
                        len(todo),
                        done / 1048576,
                        total / 1048576,
                        done / 1048576 / (now - started),
                    )
        for f, sha, at in fresh:
            known[f.rel] = sha
            if at - f.mtime_ns < RACY_WINDOW_NS:
                self._racy[f.rel] = (f, sha)
        self.cache.store(self.root, fresh)
        return known

    def _hash_one(self, f: LocalFile) -> tuple[LocalFile, str, int] | None:
        at = time.time_ns()
        try:
            sha, n = sha256_of(f.path)
            after = os.stat(f.path)
        except FileNotFoundError:
            return None
        with self._lock:
            self.stats.files_hashed += 1
            self.stats.bytes_hashed += n
        if not f.same_stat(after) or n != f.size:
            return None  # written while we read it: no trustworthy digest this run
        return f, sha, at

    def settle_racy(self) -> list[str]:
        """Re-hash the files hashed within their last write's clock tick, once that tick is over.

        Returns the rels whose content is not what was hashed (written again during the run). An
        unchanged one is cached as trustworthy, so the next run reads nothing.
        """
        if not self._racy:
            return []
        newest = max(f.mtime_ns for f, _ in self._racy.values())
        wait_ns = newest + RACY_WINDOW_NS - time.time_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        changed: list[str] = []
        settled: list[tuple[LocalFile, str, int]] = []
        for rel, (f, sha) in sorted(self._racy.items()):
            again = self._hash_one(f)
            if again is None or again[1] != sha:
                changed.append(rel)
            else:
                settled.append(again)
        self._racy.clear()
        self.cache.store(self.root, settled)
        return changed
