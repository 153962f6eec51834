"""Checkpoints in a local state directory (like azcopy's plan files), for the CLI and for tests.

One JSON file per transfer, written atomically (temp file + rename), so a process killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.errors import CheckpointError

C = TypeVar("C", UploadCheckpoint, DownloadCheckpoint)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "airflow-databricks-transfer"


def transfer_key(kind: str, source: str, destination: str) -> str:
    """A stable file name for one (kind, source, destination) transfer."""
    digest = hashlib.sha256(f"{kind}\n{source}\n{destination}".encode()).hexdigest()[:24]
    return f"{kind}-{digest}.json"


class FileCheckpointSink(Generic[C]):
    """One checkpoint file of one kind (e.g. ``azure_blob.upload``): a file of another kind is refused."""

    def __init__(self, path: str | os.PathLike[str], cls: type[C], kind: str | None = None) -> None:
        self.path = Path(path)
        self._from_json: Callable[[str], C] = (
            cls.from_json if kind is None else functools.partial(cls.from_json, kind=kind)
        )

    def load(self) -> C | None:
        """The stored checkpoint, None if there is none; CheckpointError if it is unusable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return self._from_json(text)

    def load_or_discard(self) -> tuple[C | None, str | None]:
        """Like load, but an unusable checkpoint is deleted and its reason returned."""
        try:
            return self.load(), None
        except CheckpointError as err:
            self.clear()
            return None, str(err)

    def save(self, checkpoint: C, changed: frozenset[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # No fsync: a killed process loses nothing (the page cache survives it), and after an OS crash
        # an older or unreadable checkpoint is only a hint that is verified, or discarded, on load.
        with open(tmp, "w") as f:
            f.write(checkpoint.to_json())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def peek(self) -> dict[str, object] | None:
        """The raw JSON, for progress displays; None if absent or unreadable."""
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None
