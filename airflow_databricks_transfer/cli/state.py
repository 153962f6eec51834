"""Where the command line keeps checkpoints: one file per (kind, source, destination) in a state dir.

Running the same command again finds the same file (the key is derived from the absolute local path
and the remote path), so an interrupted transfer resumes; the engine deletes it on success.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TypeVar

from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    IngestCheckpoint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink, default_state_dir, transfer_key

C = TypeVar("C", UploadCheckpoint, DownloadCheckpoint)


def state_dir(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "state_dir", None) or os.environ.get("ADT_STATE_DIR")
    return Path(chosen) if chosen else default_state_dir()


def local_key(path: str) -> str:
    """The local side of a key: absolute, so a rerun from another directory finds the checkpoint."""
    return os.path.abspath(path)


def open_checkpoint(
    args: argparse.Namespace, cls: type[C], kind: str, source: str, destination: str
) -> tuple[FileCheckpointSink[C], C | None]:
    """The sink of this transfer and the checkpoint to resume from (None: start clean).

    An unusable checkpoint is deleted and said so on stderr; ``--no-resume`` deletes it silently.
    """
    sink = FileCheckpointSink(state_dir(args) / transfer_key(kind, source, destination), cls, kind)
    if getattr(args, "no_resume", False):
        sink.clear()
        return sink, None
    checkpoint, discarded = sink.load_or_discard()
    if discarded:
        print(f"adt: ignoring the stored checkpoint ({discarded}); starting clean", file=sys.stderr)
    elif checkpoint is not None and not getattr(args, "json", False):
        print(f"adt: found a checkpoint to resume from: {sink.path}", file=sys.stderr)
    return sink, checkpoint


class LocalFileCheckpoints:
    """Per-file upload checkpoints of a sync in the state dir (the sync engine's ``FileCheckpoints``):
    keyed by the local file's absolute path and the target folder, so the same sync run again resumes
    its half-sent large files."""

    def __init__(self, args: argparse.Namespace, local_root: str, target: str) -> None:
        self._dir = state_dir(args)
        self._root = local_key(local_root)
        self._target = target

    def _sink(self, rel: str) -> FileCheckpointSink[UploadCheckpoint]:
        key = transfer_key("files_api.upload", os.path.join(self._root, rel), f"{self._target}\n{rel}")
        return FileCheckpointSink(self._dir / key, UploadCheckpoint, "files_api.upload")

    def load(self, rel: str) -> tuple[UploadCheckpoint | None, str | None]:
        return self._sink(rel).load_or_discard()

    def sink(self, rel: str) -> FileCheckpointSink[UploadCheckpoint]:
        return self._sink(rel)


class IngestFileSink:
    """The ingest checkpoint (one small JSON value) in the state dir, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> IngestCheckpoint | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return IngestCheckpoint.from_dict(json.loads(text))

    def save(self, checkpoint: IngestCheckpoint, changed: frozenset[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(checkpoint.to_json())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
