"""The emulator's state: real Delta tables under a warehouse directory, one committer thread per table.

Records from every stream into a table queue at its committer, which appends them with
``deltalake.write_deltalake`` in batches (by count, bytes or age of the oldest waiting record) and only
then reports each submission committed; streams acknowledge after that report. A Delta commit costs
milliseconds and a new file, so one commit per record would make the table and the emulator crawl.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from airflow_databricks_transfer.testing.zerobus.schema import SchemaError, TableSchema
from airflow_databricks_transfer.testing.zerobus.settings import ZerobusSettings

_PART = re.compile(r"^[A-Za-z0-9_]+$")

# done(commit_version, error): exactly one call per submission, on the committer thread
Done = Callable[[int | None, BaseException | None], None]


def split_table_name(name: str) -> tuple[str, str, str]:
    """``catalog.schema.table`` (ASCII letters, digits, underscores), as the service requires."""
    parts = name.split(".")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        raise ValueError(f"table name must be catalog.schema.table of letters, digits and _: {name!r}")
    return parts[0], parts[1], parts[2]


@dataclass
class _Submission:
    rows: list[dict[str, Any]]
    nbytes: int
    done: Done
    queued_at: float = field(default_factory=time.monotonic)


class Table:
    """One Delta table and its committer."""

    def __init__(
        self, name: str, path: Path, schema: TableSchema, settings: Callable[[], ZerobusSettings]
    ) -> None:
        self.name = name
        self.path = path
        self.schema = schema
        self._arrow = schema.arrow()
        self._delta = DeltaTable(str(path))  # written through, so its version follows our commits
        self._settings = settings
        self._cond = threading.Condition()
        self._pending: list[_Submission] = []
        self._pending_records = 0
        self._pending_bytes = 0
        self._stopped = False
        self.commits = 0
        self.records_committed = 0
        self._thread = threading.Thread(target=self._run, name=f"zerobus-commit-{name}", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]], nbytes: int, done: Done) -> None:
        with self._cond:
            if self._stopped:
                raise RuntimeError("table is closed")
            self._pending.append(_Submission(rows, nbytes, done))
            self._pending_records += len(rows)
            self._pending_bytes += nbytes
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _take(self) -> list[_Submission] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if not self._pending:
                return None
            s = self._settings()
            deadline = self._pending[0].queued_at + s.commit_interval_s
            while (
                not self._stopped
                and self._pending_records < s.commit_max_records
                and self._pending_bytes < s.commit_max_bytes
                and (left := deadline - time.monotonic()) > 0
            ):
                self._cond.wait(left)
            batch, self._pending = self._pending, []
            self._pending_records = self._pending_bytes = 0
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            rows = [row for sub in batch for row in sub.rows]
            version: int | None = None
            error: BaseException | None = None
            try:
                write_deltalake(self._delta, pa.Table.from_pylist(rows, schema=self._arrow), mode="append")
                version = self._delta.version()
                self.commits += 1
                self.records_committed += len(rows)
            except Exception as err:  # noqa: BLE001 - every submission hears of the failed commit
                error = err
            for sub in batch:
                sub.done(version, error)


class Warehouse:
    """Tables by ``catalog.schema.table`` under ``root/catalog/schema/table``; existing ones load at start."""

    def __init__(self, root: Path, settings: Callable[[], ZerobusSettings]) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._settings = settings
        self._lock = threading.Lock()
        self._tables: dict[str, Table] = {}
        for log_dir in sorted(self.root.glob("*/*/*/_delta_log")):
            path = log_dir.parent
            name = ".".join(path.relative_to(self.root).parts)
            try:
                schema = TableSchema.from_arrow(pa.schema(DeltaTable(str(path)).schema().to_arrow()))
            except (SchemaError, ValueError, OSError):
                continue  # a table the emulator cannot write stays unknown (NOT_FOUND)
            self._tables[name] = Table(name, path, schema, settings)

    def path_of(self, name: str) -> Path:
        return self.root.joinpath(*split_table_name(name))

    def create(self, name: str, schema: TableSchema, *, exist_ok: bool = False) -> Table:
        with self._lock:
            existing = self._tables.get(name)
            if existing is not None:
                if exist_ok and existing.schema == schema:
                    return existing
                raise ValueError(f"table {name} already exists")
            path = self.path_of(name)
            DeltaTable.create(str(path), schema=schema.arrow(), mode="error", name=split_table_name(name)[2])
            table = Table(name, path, schema, self._settings)
            self._tables[name] = table
            return table

    def get(self, name: str) -> Table | None:
        with self._lock:
            return self._tables.get(name)

    def __iter__(self) -> Iterator[Table]:
        with self._lock:
            return iter(list(self._tables.values()))

    def drop(self, name: str) -> bool:
        with self._lock:
            table = self._tables.pop(name, None)
        if table is None:
            return False
        table.close()
        shutil.rmtree(table.path, ignore_errors=True)
        return True

    def close(self) -> None:
        with self._lock:
            tables, self._tables = list(self._tables.values()), {}
        for table in tables:
            table.close()

    def reset(self) -> None:
        """Drop every table (files included)."""
        for table in list(self):
            self.drop(table.name)
