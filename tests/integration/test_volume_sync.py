"""One-way local -> Volume sync against the Files API emulator: change detection, safety, failures."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.clients.volume_tree import FilesApiVolumeTree
from airflow_databricks_transfer.engine.errors import InvalidRequestError, RemoteNotFoundError
from airflow_databricks_transfer.engine.sync import (
    FRAGMENTS_DIR,
    MANIFEST_NAME,
    SyncOptions,
    VolumeSync,
    content_name,
    merge_fragments,
)
from airflow_databricks_transfer.engine.tree import HashCache
from airflow_databricks_transfer.engine.upload import UploadOptions
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from tests.integration.protocol_api import VOLUME

pytestmark = pytest.mark.integration

TARGET = f"/Volumes/{VOLUME.replace('.', '/')}/sync"


@pytest.fixture
def tree_api(emu: FilesApiEmulator) -> Iterator[FilesApiVolumeTree]:
    ws = WorkspaceClient(config=Config(host=emu.url, token=emu.token, retry_timeout_seconds=5))
    client = FilesApiClient(ws)
    yield FilesApiVolumeTree(client)
    client.http.close()


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "data/b.csv": b"x,y\n1,2\n",
        "data/deep/c.bin": os.urandom(3000),
        "empty.dat": b"",
    }
    for rel, data in files.items():
        write(root, rel, data)
    return files


def sync(
    api: FilesApiVolumeTree, root: Path, cache: HashCache, target: str = TARGET, **opts: object
) -> VolumeSync:
    return VolumeSync(api, root, target, SyncOptions(**opts), hash_cache=cache)  # type: ignore[arg-type]


def remote_bytes(emu: FilesApiEmulator, rel: str, target: str = TARGET) -> bytes:
    return emu.local_path(f"{target}/{rel}").read_bytes()


def puts(emu: FilesApiEmulator) -> list[str]:
    return [r.path for r in emu.requests() if r.route == "files.put" and not r.path.endswith(MANIFEST_NAME)]


def test_first_sync_uploads_all_second_uploads_and_hashes_nothing(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    files = make_tree(root)
    cache = HashCache(tmp_path / "cache.sqlite")

    first = sync(tree_api, root, cache).run()
    assert (first.uploaded, first.skipped, first.failed) == (4, 0, 0)
    assert first.bytes_uploaded == sum(len(d) for d in files.values())
    assert {a.reason for a in first.actions} == {"new"}
    for rel, data in files.items():
        assert remote_bytes(emu, rel) == data
    manifest = json.loads(remote_bytes(emu, MANIFEST_NAME))
    assert set(manifest["files"]) == set(files)
    assert all(e["remote_mtime_ms"] for e in manifest["files"].values())

    emu.reset(state=False, faults=False, log=True)
    second = sync(tree_api, root, HashCache(tmp_path / "cache.sqlite")).run()
    assert (second.uploaded, second.skipped, second.failed) == (0, 4, 0)
    # nothing read: every hash came from the cache, and nothing was sent
    assert second.files_hashed == 0 and second.bytes_hashed == 0
    assert second.hash_cache_hits == 4
    assert puts(emu) == []


def test_changed_file_is_uploaded_again_even_with_the_same_size(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    cache = HashCache(None)
    sync(tree_api, root, cache).run()
    path = write(root, "a.txt", b"ALPHA\n")  # same size, new content and mtime
    # written a second ago: out of the racy window, so one read decides
    past = path.stat().st_mtime_ns - 1_000_000_000
    os.utime(path, ns=(past, past))
    emu.reset(state=False, faults=False, log=True)

    result = sync(tree_api, root, cache).run()
    assert [(a.rel, a.reason) for a in result.actions] == [("a.txt", "changed")]
    assert result.files_hashed == 1  # only the file whose stat changed was read
    assert remote_bytes(emu, "a.txt") == b"ALPHA\n"
    assert puts(emu) == [f"{TARGET}/a.txt"]


def test_a_remote_file_changed_by_someone_else_is_reported_and_replaced(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    files = make_tree(root)
    cache = HashCache(None)
    sync(tree_api, root, cache).run()
    # another writer replaces the Volume copy (different size)
    tree_api.write_small(f"{TARGET}/data/b.csv", b"tampered contents")

    result = sync(tree_api, root, cache).run()
    assert result.remote_changed == ["data/b.csv"]
    assert [(a.rel, a.reason) for a in result.actions] == [("data/b.csv", "remote changed")]
    assert remote_bytes(emu, "data/b.csv") == files["data/b.csv"]

    # deleted on the Volume: sent again too
    tree_api.delete_file(f"{TARGET}/a.txt")
    again = sync(tree_api, root, cache).run()
    assert [(a.rel, a.reason) for a in again.actions] == [("a.txt", "remote missing")]


def test_force_upload_ignores_both_caches(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    cache = HashCache(None)
    sync(tree_api, root, cache).run()
    result = sync(tree_api, root, cache, force_upload=True).run()
    assert result.uploaded == 4 and {a.reason for a in result.actions} == {"forced"}
    assert result.files_hashed == 4


def test_include_exclude_hidden_and_partial_files(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    for rel in (
        "keep.txt",
        "docs/readme.md",
        "docs/draft_notes.md",
        "logs/run.log",
        "build/out.txt",
        ".env",
        ".git/config",
        "big.bin.partial",
        "notes.txt~",
        "#autosave#",
        ".report.pdf.adt-partial",
    ):
        write(root, rel, rel.encode())

    plan = sync(
        tree_api, root, HashCache(None), include=("*.txt", "docs/**"), exclude=("*draft*", "build")
    ).plan()
    assert sorted(a.rel for a in plan.uploads) == ["docs/readme.md", "keep.txt"]
    reasons = {s.rel: s.reason for s in plan.skipped}
    assert reasons[".env"] == "hidden" and reasons[".git/"] == "hidden"
    assert reasons["big.bin.partial"] == reasons["notes.txt~"] == "temporary or partial file"
    assert reasons["docs/draft_notes.md"] == "excluded by '*draft*'"
    assert reasons["build/"] == "excluded by 'build'"
    assert reasons["logs/run.log"] == "not matched by any include pattern"


def test_dry_run_lists_what_and_why_and_sends_nothing(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    cache = HashCache(None)
    sync(tree_api, root, cache).run()
    write(root, "a.txt", b"new contents\n")
    write(root, "new/file.txt", b"fresh")
    (root / "empty.dat").unlink()
    started = time.time()

    result = sync(tree_api, root, cache, delete_removed=True).run(dry_run=True)
    assert result.dry_run
    assert sorted((a.rel, a.reason) for a in result.actions) == [
        ("a.txt", "changed"),
        ("new/file.txt", "new"),
    ]
    assert result.deletes == ["empty.dat"]
    assert result.uploaded == 0 and result.deleted == 0
    # (the log records a request when it ends: one of the first sync's may be logged after ``started``)
    writes = [r for r in emu.requests() if r.time - r.duration_s >= started]
    assert [r for r in writes if r.method in ("PUT", "POST", "DELETE")] == []
    assert remote_bytes(emu, "a.txt") == b"alpha\n"


def test_delete_removed_stays_inside_the_target(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    cache = HashCache(None)
    sibling = f"/Volumes/{VOLUME.replace('.', '/')}/sync-other/keep.txt"
    tree_api.write_small(sibling, b"not ours")
    sync(tree_api, root, cache).run()
    (root / "data" / "deep" / "c.bin").unlink()

    result = sync(tree_api, root, cache, delete_removed=True).run()
    assert result.deletes == ["data/deep/c.bin"] and result.deleted == 1
    assert not emu.local_path(f"{TARGET}/data/deep/c.bin").exists()
    assert emu.local_path(sibling).read_bytes() == b"not ours"
    manifest = json.loads(remote_bytes(emu, MANIFEST_NAME))
    assert "data/deep/c.bin" not in manifest["files"]
    # without the switch nothing is deleted
    write(root, "x.txt", b"x")
    (root / "a.txt").unlink()
    assert sync(tree_api, root, cache).run().deleted == 0
    assert emu.local_path(f"{TARGET}/a.txt").exists()


def test_unicode_spaces_and_hash_signs_in_names(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    names = {"répertoire/naïve café.txt": b"1", "with space/report #1.txt": b"2", "日本語/データ?.csv": b"3"}
    for rel, data in names.items():
        write(root, rel, data)
    cache = HashCache(None)
    result = sync(tree_api, root, cache).run()
    assert result.failed == 0 and result.uploaded == 3
    for rel, data in names.items():
        assert remote_bytes(emu, rel) == data
    assert sync(tree_api, root, cache).run().uploaded == 0


def test_symlink_escape_and_dotdot_are_refused(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    write(root, "inside.txt", b"in")
    secret = write(tmp_path, "outside/secret.txt", b"do not upload")
    (root / "escape.txt").symlink_to(secret)
    (root / "escape-dir").symlink_to(secret.parent, target_is_directory=True)
    (root / "alias.txt").symlink_to(root / "inside.txt")

    result = sync(tree_api, root, HashCache(None)).run()
    assert sorted((s.rel, s.reason) for s in result.refused) == [
        ("escape-dir", "symlink points outside the root"),
        ("escape.txt", "symlink points outside the root"),
    ]
    assert result.failed == 2 and {f.error for f in result.failures} == {"Refused"}
    assert sorted(a.rel for a in result.actions) == ["alias.txt", "inside.txt"]
    assert not emu.local_path(f"{TARGET}/escape.txt").exists()
    assert not any(b"do not upload" in p.read_bytes() for p in emu.root.rglob("*") if p.is_file())

    for bad in (f"{TARGET}/../other", "/Volumes/main/default", "/tmp/x"):
        with pytest.raises(InvalidRequestError):
            sync(tree_api, root, HashCache(None), target=bad)
    with pytest.raises(InvalidRequestError, match=r"'\.\.'"):
        SyncOptions(include=("../*.txt",))


def test_one_failing_file_is_reported_while_the_others_land(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    files = make_tree(root)
    # the workspace refuses this one file for good; a 503 on another is retried and heals
    emu.add_fault(route="files.put", path=f"{TARGET}/data/b.csv", status=400, times=None)
    emu.add_fault(route="files.put", path=f"{TARGET}/a.txt", status=503, retry_after_s=0.1)

    result = sync(tree_api, root, HashCache(None)).run()
    assert result.failed == 1 and result.uploaded == 3
    assert [f.path for f in result.failures] == ["data/b.csv"]
    assert result.failures[0].error == "InvalidRequestError"
    for rel in ("a.txt", "data/deep/c.bin", "empty.dat"):
        assert remote_bytes(emu, rel) == files[rel]
    manifest = json.loads(remote_bytes(emu, MANIFEST_NAME))
    assert "data/b.csv" not in manifest["files"] and "a.txt" in manifest["files"]

    emu.clear_faults()
    retry = sync(tree_api, root, HashCache(None)).run()
    assert [a.rel for a in retry.actions] == ["data/b.csv"] and retry.failed == 0


def test_content_addressed_naming(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    files = make_tree(root)
    cache = HashCache(None)
    result = sync(tree_api, root, cache, naming="content").run()

    for rel, data in files.items():
        name = content_name(rel, hashlib.sha256(data).hexdigest())
        assert remote_bytes(emu, name) == data
    assert content_name("data/b.csv", "ab" * 32) == "data/b_abababababababab.csv"
    assert content_name(".bashrc", "cd" * 32) == ".bashrc_cdcdcdcdcdcdcdcd"
    assert result.uploaded == 4
    assert sync(tree_api, root, cache, naming="content").run().uploaded == 0
    write(root, "a.txt", b"v2")
    changed = sync(tree_api, root, cache, naming="content", delete_removed=True).run()
    assert [a.reason for a in changed.actions] == ["changed"]
    # the old content-addressed copy is this sync's and is no longer wanted
    assert changed.deletes == [content_name("a.txt", hashlib.sha256(b"alpha\n").hexdigest())]


def test_a_corrupt_manifest_means_everything_is_sent_again(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    cache = HashCache(None)
    sync(tree_api, root, cache).run()
    tree_api.write_small(f"{TARGET}/{MANIFEST_NAME}", b'{"schema": "someone-else"}')
    result = sync(tree_api, root, cache).run()
    assert result.uploaded == 4 and {a.reason for a in result.actions} == {"remote unknown"}
    assert json.loads(remote_bytes(emu, MANIFEST_NAME))["kind"] == "volume_sync.manifest"


def test_missing_volume_is_a_clear_error(tree_api: FilesApiVolumeTree, tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root)
    with pytest.raises(RemoteNotFoundError, match="volume /Volumes/nope/x/y does not exist"):
        sync(tree_api, root, HashCache(None), target="/Volumes/nope/x/y/dir").run()
    with pytest.raises(InvalidRequestError, match="not a directory"):
        sync(tree_api, tmp_path / "missing", HashCache(None)).run()


def test_batches_in_fragments_then_merged(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    sizes = [50_000, 40_000, 30_000, 20_000, 10_000, 5_000]
    for i, size in enumerate(sizes):
        write(root, f"f{i}.bin", os.urandom(size))
    cache = HashCache(None)
    plan = sync(tree_api, root, cache).plan()
    batches = plan.batches(3)
    loads = sorted(sum(plan.files[r].size for r in b) for b in batches)
    assert loads == [50_000, 50_000, 55_000]  # largest first into the lightest batch
    assert sorted(r for b in batches for r in b) == sorted(plan.files)

    for i, batch in enumerate(batches):
        VolumeSync(tree_api, root, TARGET, hash_cache=cache, fragment=f"run1-{i}", only=batch).run()
    assert not emu.local_path(f"{TARGET}/{MANIFEST_NAME}").exists()
    assert len(list(emu.local_path(f"{TARGET}/{FRAGMENTS_DIR}").iterdir())) == 3

    # a plain sync before the merge already sees the fragments: nothing to send
    assert sync(tree_api, root, cache).plan().uploads == []
    assert merge_fragments(tree_api, TARGET) == {"fragments": 3, "files": 6}
    assert list(emu.local_path(f"{TARGET}/{FRAGMENTS_DIR}").iterdir()) == []
    assert merge_fragments(tree_api, TARGET) == {"fragments": 0, "files": 6}  # again: nothing to do
    manifest = json.loads(remote_bytes(emu, MANIFEST_NAME))
    assert len(manifest["files"]) == 6
    assert sync(tree_api, root, cache).run().uploaded == 0


def test_large_and_small_files_share_one_memory_bound(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    big = os.urandom(12 * 1024 * 1024)
    write(root, "big.bin", big)
    for i in range(20):
        write(root, f"small/{i}.txt", str(i).encode())
    opts = UploadOptions(
        part_size_bytes=5 * 1024 * 1024, multipart_threshold_bytes=6 * 1024 * 1024, parallelism=4
    )
    result = VolumeSync(
        tree_api,
        root,
        TARGET,
        SyncOptions(upload=opts, memory_limit_bytes=10 * 1024 * 1024, concurrency=3),
        hash_cache=HashCache(None),
    ).run()
    assert result.uploaded == 21 and result.failed == 0
    assert remote_bytes(emu, "big.bin") == big
    parts = [r for r in emu.requests() if r.route == "presigned.part"]
    assert len(parts) == 3  # multipart, with at most 2 part workers (2 x 5 MiB fit the 10 MiB bound)


def test_a_local_file_named_like_the_manifest_is_refused(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    write(root, MANIFEST_NAME, b'{"forged": true}')
    write(root, f"{FRAGMENTS_DIR}/x.json", b"{}")
    result = sync(tree_api, root, HashCache(None), skip_hidden=False).run()
    assert sorted(s.rel for s in result.refused) == [f"{FRAGMENTS_DIR}/x.json", MANIFEST_NAME]
    assert result.uploaded == 4
    assert json.loads(remote_bytes(emu, MANIFEST_NAME))["kind"] == "volume_sync.manifest"


def test_small_files_go_folder_by_folder_so_each_manifest_batch_lists_few_folders(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    # sizes that interleave the folders when ordered by size alone
    for i in range(12):
        write(root, f"d{i % 3}/f{i:02d}.txt", b"x" * (100 + i))
    emu.reset(state=False, faults=False, log=True)
    result = sync(tree_api, root, HashCache(None), concurrency=1, manifest_every_files=2).run()
    assert result.uploaded == 12
    log = [r for r in emu.requests() if r.route in ("files.put", "directories.get")]
    sent = [r.path.rsplit("/", 2)[-2] for r in log if r.route == "files.put" and MANIFEST_NAME not in r.path]
    assert sent == ["d0"] * 4 + ["d1"] * 4 + ["d2"] * 4
    # once uploads began, each of the 6 batches of 2 lists only its own folder for the modification times
    first_put = next(i for i, r in enumerate(log) if r.route == "files.put")
    assert sum(1 for r in log[first_put:] if r.route == "directories.get") == 6


def test_recursive_listing_walks_folders_concurrently_and_names_every_file(
    emu: FilesApiEmulator, tree_api: FilesApiVolumeTree
) -> None:
    names = [f"{a}/{b}/f{i}.txt" for a in ("x", "y", "z") for b in ("p", "q") for i in range(2)]
    names += ["top.txt", "x/mid.txt", "y/q/r/deep.txt"]
    for rel in names:
        tree_api.write_small(f"{TARGET}/{rel}", rel.encode())
    listed = tree_api.list_files(TARGET)
    assert sorted(listed) == sorted(names)
    assert all(listed[rel].size == len(rel.encode()) and listed[rel].mtime_ms for rel in names)
    assert sorted(tree_api.list_files(f"{TARGET}/x", recursive=False)) == ["mid.txt"]
    assert tree_api.list_files(f"{TARGET}/missing") == {}
