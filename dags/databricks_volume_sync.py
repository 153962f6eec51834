"""Keep a Unity Catalog Volume folder in step with a local folder: only new and changed files are sent.

Two DAGs share this code:

- ``databricks_volume_sync`` (hourly, and from the UI with its Params form): makes sure a small
  generated tree exists (a stand-in for your exports), then syncs it. A run after an unchanged tree sends
  nothing and reads no file: the hash cache knows every file's digest and the manifest in the Volume
  knows what is there. ``make demo`` runs it twice and shows that.
- ``databricks_volume_sync_fanout`` (manual): the same sync spread over several workers. A plan task
  splits the changed files into batches balanced by bytes, one mapped task per batch uploads it, and a
  merge task folds what each batch recorded into the manifest, even if a batch failed.

Runs offline against the bundled emulator when AIRFLOW_CONN_DATABRICKS_DEFAULT points at it (``make
demo`` does that), or against a real workspace with a real ``databricks_default``.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_databricks_transfer.operators.sync import (
    DatabricksVolumeSyncMergeOperator,
    DatabricksVolumeSyncOperator,
    DatabricksVolumeSyncPlanOperator,
)

DEFAULT_DIR = os.environ.get("ADT_SYNC_DIR", "/tmp/adt-sync-tree")
DEFAULT_TARGET = "/Volumes/main/default/landing/sync"


def params() -> dict[str, Param]:
    return {
        "local_dir": Param(
            DEFAULT_DIR,
            type="string",
            minLength=1,
            title="Local folder",
            description="The folder to sync (on the worker). The DAG fills it with a generated tree "
            "when it holds fewer files than asked for.",
        ),
        "volume_dir": Param(
            DEFAULT_TARGET,
            type="string",
            pattern="^/Volumes/[^/]+/[^/]+/[^/]+(/.*)?$",
            title="Volume folder",
            description="/Volumes/<catalog>/<schema>/<volume>/<folder>: the sync's target.",
        ),
        "files": Param(
            200,
            type="integer",
            minimum=0,
            title="Generated files",
            description="How many sample files the tree should hold (1-64 KiB each, in 10 folders).",
        ),
        "include": Param(
            "", type="string", title="Include", description="Comma-separated globs; empty: every file."
        ),
        "exclude": Param("*.tmp", type="string", title="Exclude", description="Comma-separated globs."),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only list what would be sent (and why) and what would be deleted.",
        ),
        "force_upload": Param(
            False,
            type="boolean",
            title="Send every file again",
            description="Ignore the manifest and the hash cache: read and send every file.",
        ),
        "delete_removed": Param(
            False,
            type="boolean",
            title="Delete removed files",
            description="Delete Volume files that no longer exist locally (only inside the Volume folder).",
        ),
        "concurrency": Param(
            5,
            type="integer",
            minimum=1,
            maximum=64,
            title="Files at once",
            description="Files sent at the same time; each large file also sends several parts at once.",
        ),
    }


@task
def generate_tree(local_dir: str, files: int) -> dict[str, Any]:
    """A deterministic tree (CSV-like files of 1-64 KiB in 10 folders), written only where missing, so
    an unchanged tree keeps its modification times and the next sync reads nothing."""
    root = Path(local_dir)
    written = 0
    for i in range(int(files)):
        path = root / f"part-{i % 10:02d}" / f"events-{i:05d}.csv"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(i)  # noqa: S311 - deterministic sample data, not a secret
        rows = rng.randint(16, 1024)
        path.write_text("".join(f"{i},{r},{rng.random():.6f}\n" for r in range(rows)))
        written += 1
    return {"files": int(files), "written": written}


COMMON: dict[str, Any] = {
    "local_dir": "{{ params.local_dir }}",
    "volume_path": "{{ params.volume_dir }}",
    "include": "{{ params.include }}",
    "exclude": "{{ params.exclude }}",
    "force_upload": "{{ params.force_upload }}",
    "concurrency": "{{ params.concurrency }}",
}

default_args: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=10)}

with DAG(
    dag_id="databricks_volume_sync",
    description="One-way sync of a local folder into a Volume folder (SHA-256 change detection).",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=params(),
    default_args=default_args,
    tags=["databricks", "volumes", "sync", "example"],
):
    tree = generate_tree("{{ params.local_dir }}", "{{ params.files }}")
    sync = DatabricksVolumeSyncOperator(
        task_id="sync",
        dry_run="{{ params.dry_run }}",
        delete_removed="{{ params.delete_removed }}",
        **COMMON,
    )
    tree >> sync


with DAG(
    dag_id="databricks_volume_sync_fanout",
    description="The same sync spread over workers: plan batches, upload them mapped, merge the records.",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        **params(),
        "batches": Param(
            4,
            type="integer",
            minimum=1,
            title="Batches",
            description="At most this many mapped upload tasks, with about equal bytes each.",
        ),
    },
    default_args=default_args,
    tags=["databricks", "volumes", "sync", "example"],
):
    tree = generate_tree("{{ params.local_dir }}", "{{ params.files }}")
    plan = DatabricksVolumeSyncPlanOperator(task_id="plan", batches="{{ params.batches }}", **COMMON)
    upload = DatabricksVolumeSyncOperator.partial(task_id="upload_batch", **COMMON).expand(files=plan.output)
    merge = DatabricksVolumeSyncMergeOperator(
        task_id="merge", volume_path="{{ params.volume_dir }}", trigger_rule="all_done"
    )
    tree >> plan >> upload >> merge
