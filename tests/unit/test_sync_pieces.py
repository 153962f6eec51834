"""The sync's pure pieces: glob rules, the path filter, the hash cache's racy rule and fallbacks, the
manifest format, batches balanced by bytes, content-addressed names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airflow_databricks_transfer.engine.errors import CheckpointError, InvalidRequestError
from airflow_databricks_transfer.engine.sync import (
    Manifest,
    ManifestEntry,
    SyncAction,
    SyncPlan,
    SyncResult,
    check_volume_folder,
    content_name,
)
from airflow_databricks_transfer.engine.tree import (
    HashCache,
    LocalFile,
    PathFilter,
    TreeHasher,
    glob_match,
    scan_tree,
)


@pytest.mark.parametrize(
    ("pattern", "rel", "expected"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "deep/er/a.txt", True),  # no '/': a name at any depth
        ("*.txt", "a.txt.gz", False),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),  # '*' stays within a folder
        ("docs/**", "docs/sub/a.md", True),
        ("**/b/*.csv", "b/x.csv", True),  # '**/' may span zero folders
        ("**/b/*.csv", "a/c/b/x.csv", True),
        ("/top.txt", "top.txt", True),  # a leading '/' anchors at the root
        ("/top.txt", "sub/top.txt", False),
        ("file?.bin", "file1.bin", True),
        ("file[0-3].bin", "file4.bin", False),
        ("file[!0-3].bin", "file4.bin", True),
        ("report #1.txt", "report #1.txt", True),
        ("data(1)+.csv", "data(1)+.csv", True),  # regex characters are literal
        ("build", "build", True),
    ],
)
def test_glob_rules(pattern: str, rel: str, expected: bool) -> None:
    assert glob_match(pattern, rel) is expected


def test_path_filter_reasons() -> None:
    flt = PathFilter(include=("*.csv",), exclude=("tmp",))
    assert flt.skip_reason("a.csv") is None
    assert flt.skip_reason("a.json") == "not matched by any include pattern"
    assert flt.skip_reason("tmp", is_dir=True) == "excluded by 'tmp'"
    assert flt.skip_reason("sub", is_dir=True) is None  # folders are descended whatever include says
    assert flt.skip_reason(".cache", is_dir=True) == "hidden"
    assert flt.skip_reason("x.csv~") == "temporary or partial file"
    assert PathFilter(skip_hidden=False, skip_temporary=False).skip_reason(".env") is None
    with pytest.raises(InvalidRequestError, match="empty"):
        PathFilter(include=(" ",))


def test_scan_refuses_non_directories_and_skips_special_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidRequestError, match="not a directory"):
        scan_tree(tmp_path / "f")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    scan = scan_tree(tmp_path)
    assert [f.rel for f in scan.files] == ["f"]
    assert {(s.rel, s.reason) for s in scan.skipped} == {
        ("pipe", "not a regular file"),
        ("broken", "broken symlink"),
    }


def _file(tmp_path: Path, name: str, data: bytes, mtime_ns: int | None = None) -> LocalFile:
    path = tmp_path / name
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    st = path.stat()
    return LocalFile(name, str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def test_cache_hit_needs_the_same_size_mtime_and_inode(tmp_path: Path) -> None:
    old = 1_700_000_000_000_000_000
    f = _file(tmp_path, "a", b"abc", old)
    cache = HashCache(tmp_path / "c.sqlite")
    hasher = TreeHasher("/root", cache)
    first = hasher.hashes([f])
    assert hasher.stats.files_hashed == 1
    again = TreeHasher("/root", cache)
    assert again.hashes([f]) == first and again.stats.files_hashed == 0
    for changed in (
        LocalFile("a", f.path, f.size, f.mtime_ns + 1, f.inode),
        LocalFile("a", f.path, f.size, f.mtime_ns, f.inode + 1),
    ):
        h = TreeHasher("/root", cache)
        h.hashes([changed])
        assert h.stats.files_hashed == 1, changed
    other_root = TreeHasher("/elsewhere", cache)
    other_root.hashes([f])
    assert other_root.stats.files_hashed == 1


def test_an_entry_hashed_in_its_files_last_tick_is_not_trusted_until_settled(tmp_path: Path) -> None:
    f = _file(tmp_path, "racy", b"v1")  # written just now: hashing it now is racy
    cache = HashCache(None)
    hasher = TreeHasher("/r", cache)
    hasher.hashes([f])
    assert cache.lookup("/r", [f]) == {}  # not trusted yet
    assert hasher.settle_racy() == []  # hashed again once the tick is over: same content
    assert set(cache.lookup("/r", [f])) == {"racy"}
    assert hasher.stats.files_hashed == 2

    g = _file(tmp_path, "racy2", b"v1")
    h2 = TreeHasher("/r", cache)
    h2.hashes([g])
    # rewritten in the same tick (same size; the mtime is put back as a coarse clock would leave it)
    Path(g.path).write_bytes(b"v2")
    os.utime(g.path, ns=(g.mtime_ns, g.mtime_ns))
    assert h2.settle_racy() == ["racy2"]
    assert cache.lookup("/r", [g]) == {}


def test_unusable_cache_files_degrade_to_hashing_without_a_cache(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    cache = HashCache(bad)
    assert cache.path is None
    f = _file(tmp_path, "a", b"x", 1_700_000_000_000_000_000)
    assert TreeHasher("/r", cache).hashes([f])["a"]
    blocked = tmp_path / "ro"
    blocked.write_text("a file where a folder should be")
    assert HashCache(blocked / "c.sqlite").path is None


def test_manifest_round_trip_and_refusals() -> None:
    m = Manifest({"a b/c#1.txt": ManifestEntry(3, "ab" * 32, 1.5, 1700000000123, "a b/c#1.txt")})
    back = Manifest.from_json(m.to_json().encode())
    assert back.files == m.files
    for bad, why in (
        (b"{", "not JSON"),
        (b'{"schema": "other"}', "not a sync manifest"),
        (json.dumps({**json.loads(m.to_json()), "version": 9}).encode(), "version 9"),
        (json.dumps({**json.loads(m.to_json()), "files": {"x": {"size": "?"}}}).encode(), "malformed"),
    ):
        with pytest.raises(CheckpointError, match=why):
            Manifest.from_json(bad)


def test_merge_keeps_the_later_upload() -> None:
    a = Manifest({"f": ManifestEntry(1, "a" * 64, 10.0, 1, "f")})
    b = Manifest(
        {"f": ManifestEntry(2, "b" * 64, 20.0, 2, "f"), "g": ManifestEntry(1, "c" * 64, 5.0, 1, "g")}
    )
    a.merge(b)
    assert a.files["f"].size == 2 and set(a.files) == {"f", "g"}
    b.merge(Manifest({"f": ManifestEntry(9, "d" * 64, 1.0, 1, "f")}))
    assert b.files["f"].size == 2


def test_batches_are_balanced_by_bytes() -> None:
    sizes = {f"f{i}": s for i, s in enumerate([100, 90, 40, 30, 30, 10, 0, 0])}
    plan = SyncPlan(
        [SyncAction(r, r, "new", s, None) for r, s in sizes.items()], [], 0, [], [], [], {}, Manifest()
    )
    batches = plan.batches(3)
    loads = sorted(sum(sizes[r] for r in b) for b in batches)
    assert loads == [100, 100, 100]
    assert sorted(r for b in batches for r in b) == sorted(sizes)
    assert plan.batches(20) and len(plan.batches(20)) == len(sizes)
    empty = SyncPlan([], [], 0, [], [], [], {}, Manifest())
    assert empty.batches(4) == []


def test_names_and_targets() -> None:
    assert content_name("a/b.tar.gz", "0123456789abcdef" * 4) == "a/b.tar_0123456789abcdef.gz"
    assert content_name("noext", "f" * 64) == "noext_ffffffffffffffff"
    assert check_volume_folder("/Volumes/c/s/v/") == "/Volumes/c/s/v"
    for bad in ("/Volumes/c/s", "Volumes/c/s/v", "/Volumes/c/s/v/../w", "/Volumes/c//v/x", "/dbfs/x/y/z"):
        with pytest.raises(InvalidRequestError):
            check_volume_folder(bad)


def test_result_lists_are_capped_for_xcom() -> None:
    r = SyncResult("/Volumes/c/s/v", dry_run=True)
    r.actions = [SyncAction(f"f{i}", f"f{i}", "new", 1, None) for i in range(1000)]
    out = r.to_dict(max_listed=50)
    assert len(out["actions"]) == 50 and len(json.dumps(out)) < 10_000
