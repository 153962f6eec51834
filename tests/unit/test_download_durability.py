"""Durable before checkpointed: the saver makes chunks durable before the checkpoint that names them.

A unit-ish test of the Downloader's checkpoint path: an in-memory source (a small fake of the port), a
recording sink, and a spy on ``make_durable`` that records, at each flush, which chunks already hold
their final bytes in the temp file. Every checkpoint must name only chunks that a flush before it saw.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_databricks_transfer.engine import download as download_mod
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, RemoteVersion
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions, current_boot_id
from airflow_databricks_transfer.engine.retry import Cancelled

CHUNK = 64 * 1024


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self._data, self._pos = data, 0

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        pass


class MemorySource:
    def __init__(self, data: bytes, before_chunk: dict[int, Callable[[], None]] | None = None) -> None:
        self._data = memoryview(data)
        self._pin: str | None = None
        self.before_chunk = before_chunk or {}

    @property
    def path(self) -> str:
        return "/Volumes/main/default/landing/mem.bin"

    def stat(self) -> RemoteVersion:
        return RemoteVersion(len(self._data), '"v1"', "Sat, 21 Nov 2026 06:00:00 GMT")

    def open_range(
        self, start: int, length: int, pinned: RemoteVersion, *, cancel: threading.Event | None = None
    ) -> _Reader:
        action = self.before_chunk.get(start // CHUNK)
        if action is not None:
            action()
        return _Reader(self._data[start : start + length])

    @property
    def data_pin(self) -> str | None:
        return self._pin

    def restore_pin(self, pin: str | None) -> None:
        self._pin = pin

    def invalidate_url(self) -> None:
        pass


class Events:
    """One ordered log of flushes and checkpoint writes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.log: list[tuple[str, frozenset[int]]] = []
        self.lock = threading.Lock()

    def complete_on_disk(self, fd: int) -> frozenset[int]:
        chunks = (len(self.data) + CHUNK - 1) // CHUNK
        return frozenset(
            i
            for i in range(chunks)
            if os.pread(fd, CHUNK, i * CHUNK) == self.data[i * CHUNK : (i + 1) * CHUNK]
        )

    def make_durable(self, fd: int) -> None:
        os.fdatasync(fd)
        with self.lock:
            self.log.append(("sync", self.complete_on_disk(fd)))

    def save(self, checkpoint: DownloadCheckpoint, changed: frozenset[int]) -> None:
        with self.lock:
            self.log.append(("save", checkpoint.done_chunks))
        self.saved = checkpoint

    def clear(self) -> None:
        pass


def _data(size: int) -> bytes:
    return random.Random(7).randbytes(size)


def test_every_checkpoint_names_only_chunks_a_prior_flush_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(40 * CHUNK + 123)
    events = Events(data)
    monkeypatch.setattr(download_mod, "make_durable", events.make_durable)
    opts = DownloadOptions(
        chunk_size_bytes=CHUNK, buffer_size_bytes=16 * 1024, parallelism=3, checkpoint_interval_s=0
    )
    out = tmp_path / "out.bin"
    Downloader(MemorySource(data), out, opts, sink=events).run()
    assert out.read_bytes() == data
    # and a try stopped mid-way, whose last checkpoint is written at the stop
    source = MemorySource(data)
    stopped = Downloader(source, tmp_path / "stopped.bin", opts, sink=events)
    source.before_chunk[30] = stopped.cancel
    with pytest.raises(Cancelled):
        stopped.run()
    assert len(events.saved.done_chunks) >= 27
    durable: frozenset[int] = frozenset()
    saves_with_chunks = 0
    for kind, chunks in events.log:
        if kind == "sync":
            durable = chunks
        elif chunks:
            saves_with_chunks += 1
            assert chunks <= durable, f"checkpoint names {sorted(chunks - durable)} before a flush saw them"
    assert saves_with_chunks >= 1 and events.saved.durable
    assert events.saved.boot_id == current_boot_id()


def test_without_durability_no_flush_and_the_checkpoint_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(5 * CHUNK)
    events = Events(data)
    monkeypatch.setattr(download_mod, "make_durable", events.make_durable)
    opts = DownloadOptions(
        chunk_size_bytes=CHUNK, parallelism=1, durable_checkpoints=False, checkpoint_interval_s=0
    )
    source = MemorySource(data)
    stopped = Downloader(source, tmp_path / "out.bin", opts, sink=events)
    source.before_chunk[3] = stopped.cancel
    with pytest.raises(Cancelled):
        stopped.run()
    assert events.saved.done_chunks
    assert [k for k, _ in events.log if k == "sync"] == []
    assert events.saved.durable is False


def test_a_filesystem_that_cannot_flush_leaves_checkpoints_marked_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(5 * CHUNK)
    events = Events(data)

    def unsupported(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(download_mod, "make_durable", unsupported)
    opts = DownloadOptions(chunk_size_bytes=CHUNK, parallelism=1, checkpoint_interval_s=0)
    Downloader(MemorySource(data), tmp_path / "out.bin", opts, sink=events).run()
    assert (tmp_path / "out.bin").read_bytes() == data  # the download itself is not hindered
    source = MemorySource(data)
    stopped = Downloader(source, tmp_path / "stopped.bin", opts, sink=events)
    source.before_chunk[3] = stopped.cancel
    with pytest.raises(Cancelled):
        stopped.run()
    assert events.saved.done_chunks and events.saved.durable is False
