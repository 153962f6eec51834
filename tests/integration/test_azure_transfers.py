"""Azure Blob downloads and uploads by the engine against Azurite, over real sockets.

Faults come from the loopback TCP fault proxy in front of Azurite (cuts, stalls), from a second client
changing the blob at a precise moment of the transfer (a range source that acts just before its n-th
ranged GET), from real credentials that are wrong, and from a real filesystem that fills up. Every
success ends byte-identical to the source; every failure is a clear error of the engine's tree.
(Kill-and-resume in a separate process: test_azure_transfers_resume.py.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import struct
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import (
    BlobBlock,
    BlobServiceClient,
    ContainerSasPermissions,
    ContentSettings,
    ExponentialRetry,
    generate_container_sas,
)

from airflow_databricks_transfer.clients.azure_blob import (
    AzureBlobClient,
    AzureBlobDownloadSource,
    AzureBlobUploadTarget,
    BlobRef,
)
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, RemoteVersion
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions, temp_path_for
from airflow_databricks_transfer.engine.errors import (
    AuthError,
    InsufficientSpaceError,
    RemoteNotFoundError,
    VerificationError,
)
from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS
from airflow_databricks_transfer.engine.ports import RangeReader
from airflow_databricks_transfer.engine.retry import Cancelled, RetryPolicy
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from airflow_databricks_transfer.engine.verify import resolve_verifiers
from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.faultproxy import FaultProxy
from airflow_databricks_transfer.testing.faults import FaultRule
from tests.integration.conftest import blob_service

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=2)
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="


# ---------------------------------------------------------------- helpers


def via(azurite: Azurite, proxy: FaultProxy) -> str:
    return azurite.connection_string(endpoint=f"http://127.0.0.1:{proxy.port}/{azurite.account_name}")


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256(path.read_bytes())


def down_opts(**kw: Any) -> DownloadOptions:
    defaults: dict[str, Any] = {
        "chunk_size_bytes": 8 * MiB,  # Azurite's fast range size; several ranges per test blob
        "parallelism": 2,
        "retry": FAST_RETRY,
        "checkpoint_interval_s": 0,
    }
    return DownloadOptions(**{**defaults, **kw})


def download(
    client: AzureBlobClient,
    ref: BlobRef,
    out: Path,
    opts: DownloadOptions,
    sink: MemorySink | None = None,
    checkpoint: DownloadCheckpoint | None = None,
    source: AzureBlobDownloadSource | None = None,
) -> Any:
    downloader = Downloader(
        source or client.download_source(ref), out, opts, sink=sink, kind="azure_blob.download"
    )
    return downloader.run(checkpoint)


class MemorySink:
    """Keeps checkpoints in memory and counts saves and clears."""

    def __init__(self) -> None:
        self.latest: Any = None
        self.saves = 0
        self.cleared = 0

    def save(self, checkpoint: Any, changed: frozenset[int]) -> None:
        self.latest = checkpoint
        self.saves += 1

    def clear(self) -> None:
        self.latest = None
        self.cleared += 1


class SteppedSource(AzureBlobDownloadSource):
    """The real Azure source, with an action run once just before its n-th ranged GET."""

    def __init__(
        self, client: AzureBlobClient, ref: BlobRef, before: dict[int, Callable[[], object]]
    ) -> None:
        super().__init__(client, ref)
        self.before, self.calls = dict(before), 0
        self.lock = threading.Lock()

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> RangeReader:
        with self.lock:
            self.calls += 1
            action = self.before.pop(self.calls, None)
        if action is not None:
            action()
        return super().open_range(start, length, pinned, cancel=cancel)


@pytest.fixture
def blob_name() -> str:
    return f"b-{uuid.uuid4().hex[:10]}.bin"


def put(direct: BlobServiceClient, container: str, name: str, data: bytes) -> None:
    direct.get_blob_client(container, name).upload_blob(data, overwrite=True)


# ---------------------------------------------------------------- 1. faults on the wire heal
@pytest.mark.parametrize("cut_with", ["fin", "rst"])
def test_download_heals_a_connection_cut_mid_body(
    azurite: Azurite,
    azure_fault_proxy: FaultProxy,
    direct: BlobServiceClient,
    container: str,
    blob_name: str,
    tmp_path: Path,
    cut_with: str,
) -> None:
    data = random_bytes(24 * MiB + 11, seed=1)
    put(direct, container, blob_name, data)
    # the first connection carries the HEAD and then the body of a range: cut it 5 MiB in
    azure_fault_proxy.add_rule(
        FaultRule(route="tcp", cut_after_bytes=5 * MiB, cut_with=cut_with, nth=1, times=1)  # type: ignore[arg-type]
    )
    client = AzureBlobClient(blob_service(via(azurite, azure_fault_proxy)))
    out = tmp_path / "out.bin"
    result = download(client, BlobRef(container, blob_name), out, down_opts())
    assert azure_fault_proxy.stats().cuts == 1
    assert sha256_file(out) == sha256(data) == result.sha256
    assert result.chunks == 4
    assert not Path(temp_path_for(str(out))).exists()


def test_download_heals_a_stalled_body_with_a_short_read_timeout(
    azurite: Azurite,
    azure_fault_proxy: FaultProxy,
    direct: BlobServiceClient,
    container: str,
    blob_name: str,
    tmp_path: Path,
) -> None:
    data = random_bytes(16 * MiB + 3, seed=2)
    put(direct, container, blob_name, data)
    # the stall outlasts any test: only the client's read timeout ends it (the fixture releases it)
    azure_fault_proxy.add_rule(FaultRule(route="tcp", stall_after_bytes=MiB, delay_s=600, nth=1, times=1))
    client = AzureBlobClient(blob_service(via(azurite, azure_fault_proxy), read_timeout=2))
    out = tmp_path / "out.bin"
    result = download(client, BlobRef(container, blob_name), out, down_opts())
    stats = azure_fault_proxy.stats()
    assert stats.stalls == 1 and stats.connections >= 2
    assert sha256_file(out) == sha256(data) == result.sha256


# ---------------------------------------------------------------- 2. overwritten blobs never mix
def test_blob_overwritten_between_tries_restarts_with_the_new_content(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    # the same size: only the ETag tells the versions apart
    old, new = random_bytes(24 * MiB, seed=3), random_bytes(24 * MiB, seed=4)
    put(direct, container, blob_name, old)
    client = AzureBlobClient(blob_service(azurite.connection_string()))
    ref, out, sink = BlobRef(container, blob_name), tmp_path / "out.bin", MemorySink()
    opts = down_opts(parallelism=1)
    source = SteppedSource(client, ref, {})
    first = Downloader(source, out, opts, sink=sink, kind="azure_blob.download")
    source.before[2] = first.cancel  # stop after one range
    with pytest.raises(Cancelled):
        first.run()
    kept = sink.latest
    assert isinstance(kept, DownloadCheckpoint) and kept.done_chunks == {0}
    assert Path(kept.temp_path).read_bytes()[: 8 * MiB] == old[: 8 * MiB]

    put(direct, container, blob_name, new)
    result = download(client, ref, out, opts, sink=sink, checkpoint=kept)
    assert result.restarted_reason == "the remote file changed since the last try"
    assert result.chunks_resumed == 0 and result.bytes_received == len(new)
    assert sha256_file(out) == sha256(new) == result.sha256
    assert sink.latest is None


def test_blob_overwritten_between_ranges_restarts_with_a_logged_reason(
    azurite: Azurite,
    direct: BlobServiceClient,
    container: str,
    blob_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = random_bytes(24 * MiB, seed=5), random_bytes(24 * MiB, seed=6)
    put(direct, container, blob_name, old)
    client = AzureBlobClient(blob_service(azurite.connection_string()))
    ref, out = BlobRef(container, blob_name), tmp_path / "out.bin"
    # the second range is asked for with the first version's ETag, after the blob was replaced
    source = SteppedSource(client, ref, {2: lambda: put(direct, container, blob_name, new)})
    with caplog.at_level(logging.WARNING, logger="airflow_databricks_transfer.engine.download"):
        result = download(client, ref, out, down_opts(parallelism=1), source=source)
    reason = result.restarted_reason
    assert reason is not None and reason.startswith("the remote file changed during the download")
    assert "ETag" in reason or "condition" in reason
    assert any("discarding the partial file and starting again" in r.getMessage() for r in caplog.records)
    assert sha256_file(out) == sha256(new) == result.sha256


# ---------------------------------------------------------------- 5. bad credentials, missing container
def _sas(azurite: Azurite, container: str, permission: ContainerSasPermissions, expiry: datetime) -> str:
    return generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=permission,
        start=datetime.now(timezone.utc) - timedelta(hours=2),
        expiry=expiry,
    )


def _assert_no_secret(err: BaseException, *secrets: str) -> None:
    text = f"{err} {err!r}"
    for secret in secrets:
        assert secret not in text
        for piece in secret.split("&"):  # the signature alone must not leak either
            if piece.startswith("sig="):
                assert piece[4:] not in text


def _small_file(tmp_path: Path, size: int = 3 * MiB + 5) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(random_bytes(size, seed=7))
    return path


def _upload(client: AzureBlobClient, ref: BlobRef, src: Path) -> Any:
    opts = UploadOptions(
        part_size_bytes=MiB, multipart_threshold_bytes=1, limits=AZURE_BLOCKS, retry=FAST_RETRY
    )
    return Uploader(client.upload_target(ref), src, opts, kind="azure_blob.upload").run()


def test_a_wrong_account_key_is_an_auth_error(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    put(direct, container, blob_name, b"x" * 1000)
    wrong = AzureBlobClient(blob_service(azurite.connection_string().replace(azurite.account_key, WRONG_KEY)))
    ref = BlobRef(container, blob_name)
    with pytest.raises(AuthError, match="refused") as down:
        download(wrong, ref, tmp_path / "out.bin", down_opts())
    _assert_no_secret(down.value, WRONG_KEY, azurite.account_key)
    assert "account key" in str(down.value)
    with pytest.raises(AuthError, match="refused") as up:
        _upload(wrong, BlobRef(container, "never-" + blob_name), _small_file(tmp_path))
    _assert_no_secret(up.value, WRONG_KEY, azurite.account_key)
    assert not (tmp_path / "out.bin").exists()


def test_an_expired_sas_is_an_auth_error(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    put(direct, container, blob_name, b"y" * 1000)
    sas = _sas(
        azurite,
        container,
        ContainerSasPermissions(read=True, write=True, create=True),
        datetime.now(timezone.utc) - timedelta(hours=1),
    )
    expired = AzureBlobClient(
        BlobServiceClient(azurite.blob_endpoint, credential=sas, retry_policy=ExponentialRetry(retry_total=0))
    )
    with pytest.raises(AuthError, match="refused") as err:
        download(expired, BlobRef(container, blob_name), tmp_path / "out.bin", down_opts())
    _assert_no_secret(err.value, sas)
    assert "expiry" in str(err.value)


def test_a_read_only_sas_cannot_upload(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    sas = _sas(
        azurite,
        container,
        ContainerSasPermissions(read=True, list=True),
        datetime.now(timezone.utc) + timedelta(hours=1),
    )
    read_only = AzureBlobClient(
        BlobServiceClient(azurite.blob_endpoint, credential=sas, retry_policy=ExponentialRetry(retry_total=0))
    )
    with pytest.raises(AuthError, match="Put Block") as err:
        _upload(read_only, BlobRef(container, blob_name), _small_file(tmp_path))
    _assert_no_secret(err.value, sas)
    assert "permissions" in str(err.value)
    assert not direct.get_blob_client(container, blob_name).exists()
    # the same SAS reads (it is the permission that is missing, not the SAS that is broken)
    put(direct, container, blob_name, b"z" * 100)
    result = download(read_only, BlobRef(container, blob_name), tmp_path / "ok.bin", down_opts())
    assert result.bytes == 100


def test_a_missing_container_is_a_not_found_error(azurite: Azurite, tmp_path: Path) -> None:
    client = AzureBlobClient(blob_service(azurite.connection_string()))
    ref = BlobRef(f"nope-{uuid.uuid4().hex[:8]}", "a.bin")
    with pytest.raises(RemoteNotFoundError, match="the container does not exist"):
        download(client, ref, tmp_path / "out.bin", down_opts())
    with pytest.raises(RemoteNotFoundError, match="the container does not exist"):
        _upload(client, ref, _small_file(tmp_path))
    assert not (tmp_path / "out.bin").exists()


# ---------------------------------------------------------------- 6. a full disk keeps a resumable partial
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 10 MiB filesystem, to run out of space for real (needs root, as in CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 10 MiB tmpfs to fill it needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_filling_up_mid_download_keeps_a_resumable_partial(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tiny_disk: Path
) -> None:
    data = random_bytes(8 * MiB, seed=8)
    put(direct, container, blob_name, data)
    client = AzureBlobClient(blob_service(azurite.connection_string()))
    ref, out, filler = BlobRef(container, blob_name), tiny_disk / "out.bin", tiny_disk / "filler"

    def fill_the_disk() -> None:  # another program takes the space meanwhile
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass

    opts = down_opts(parallelism=1, chunk_size_bytes=2 * MiB, buffer_size_bytes=MiB)
    sink = MemorySink()
    with pytest.raises(InsufficientSpaceError, match="finished chunks are kept"):
        download(client, ref, out, opts, sink=sink, source=SteppedSource(client, ref, {3: fill_the_disk}))
    kept = sink.latest
    assert isinstance(kept, DownloadCheckpoint) and kept.done_chunks == {0, 1}
    assert Path(kept.temp_path).exists() and not out.exists()
    filler.unlink()  # space freed: the retry continues from the finished chunks
    result = download(client, ref, out, opts, sink=sink, checkpoint=kept)
    assert result.chunks_resumed == 2 and result.bytes_received == 4 * MiB
    assert sha256_file(out) == sha256(data)


# ---------------------------------------------------------------- 7. model-file verifiers end to end
def safetensors_bytes(floats: int, seed: int) -> bytes:
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "weight": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + random_bytes(4 * floats, seed)


def torch_zip_bytes(size: int, seed: int) -> bytes:
    """The layout torch.save writes since 1.6: <archive>/data.pkl plus stored tensor storages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("model/data/0", random_bytes(size, seed))
        zf.writestr("model/version", b"3\n")
    return buf.getvalue()


MODEL_FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "safetensors": ("model.safetensors", lambda: safetensors_bytes(MiB + 5, seed=9)),
    "pytorch": ("model.pt", lambda: torch_zip_bytes(4 * MiB + 1, seed=10)),
}


@pytest.fixture
def hook(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The user's path: AzureBlobTransferHook over a wasb connection (an AIRFLOW_CONN_* JSON)."""
    from airflow_databricks_transfer.hooks.azure_blob import AzureBlobTransferHook

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    conn = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string()}}
    monkeypatch.setenv("AIRFLOW_CONN_WASB_XFER", json.dumps(conn))
    return AzureBlobTransferHook("wasb_xfer")


@pytest.mark.parametrize("kind", sorted(MODEL_FILES))
def test_model_file_verifiers_accept_a_good_file_and_reject_a_truncated_one(
    hook: Any, direct: BlobServiceClient, container: str, tmp_path: Path, kind: str
) -> None:
    name, make = MODEL_FILES[kind]
    good = make()
    folder = f"m-{uuid.uuid4().hex[:8]}"
    put(direct, container, f"{folder}/good/{name}", good)
    put(direct, container, f"{folder}/bad/{name}", good[: len(good) - 1000])
    opts = down_opts(verifiers=tuple(resolve_verifiers("auto")))

    out = tmp_path / name
    result = hook.download_file(
        container, f"{folder}/good/{name}", str(out), chunk_size_bytes=MiB, options=opts
    )
    assert kind in result.verified and "size" in result.verified
    assert out.read_bytes() == good

    bad_out, sink = tmp_path / "bad" / name, MemorySink()
    bad_out.parent.mkdir()
    with pytest.raises(VerificationError, match=kind):
        hook.download_file(
            container, f"{folder}/bad/{name}", str(bad_out), chunk_size_bytes=MiB, options=opts, sink=sink
        )
    assert sink.saves > 0 and sink.latest is None and sink.cleared > 0  # there was a checkpoint; now none
    assert list(bad_out.parent.iterdir()) == []  # no partial, no result


# ---------------------------------------------------------------- 8. a wrong stored Content-MD5
def test_a_wrong_stored_content_md5_fails_the_download_and_deletes_the_partial(
    hook: Any, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    data = random_bytes(10 * MiB + 1, seed=11)
    put(direct, container, blob_name, data)
    blob = direct.get_blob_client(container, blob_name)
    blob.set_http_headers(ContentSettings(content_md5=bytearray(hashlib.md5(data).digest())))
    out = tmp_path / "right" / "out.bin"
    out.parent.mkdir()
    result = hook.download_file(container, blob_name, str(out))
    assert "content-md5" in result.verified and out.read_bytes() == data  # the check runs, and passes

    blob.set_http_headers(ContentSettings(content_md5=bytearray(hashlib.md5(b"other bytes").digest())))
    bad, sink = tmp_path / "wrong" / "out.bin", MemorySink()
    bad.parent.mkdir()
    with pytest.raises(VerificationError, match=r"Content-MD5 mismatch"):
        hook.download_file(container, blob_name, str(bad), sink=sink)
    assert sink.saves > 0 and sink.latest is None
    assert list(bad.parent.iterdir()) == []


# ---------------------------------------------------------------- staged blocks dropped before the commit
def test_blocks_dropped_by_another_writer_before_the_commit_restart_the_upload_clean(
    azurite: Azurite, direct: BlobServiceClient, container: str, blob_name: str, tmp_path: Path
) -> None:
    """Another writer's Put Block List discards this upload's uncommitted blocks; the commit then gets 400
    InvalidBlockList, which must read as a lost session (start clean), not as a refused request."""
    src = _small_file(tmp_path)
    client = AzureBlobClient(blob_service(azurite.connection_string()))
    ref = BlobRef(container, blob_name)

    class RacedTarget(AzureBlobUploadTarget):
        commits = 0

        def complete(self, token: str, parts: Any, *, content_md5: bytes | None = None) -> None:
            type(self).commits += 1
            if type(self).commits == 1:
                other = direct.get_blob_client(container, blob_name)
                theirs = "oth-" + "0" * 16 + "-000001"  # every block id of a blob has one length
                other.stage_block(theirs, b"another writer")
                other.commit_block_list([BlobBlock(theirs)])
            super().complete(token, parts, content_md5=content_md5)

    opts = UploadOptions(
        part_size_bytes=MiB, multipart_threshold_bytes=1, limits=AZURE_BLOCKS, retry=FAST_RETRY
    )
    result = Uploader(RacedTarget(client, ref), src, opts, kind="azure_blob.upload").run()
    assert RacedTarget.commits == 2
    assert result.restarted_reason is not None and "InvalidBlockList" in result.restarted_reason
    assert direct.get_blob_client(container, blob_name).download_blob().readall() == src.read_bytes()
