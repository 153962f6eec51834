"""The source file changes between two tries of an upload: the retry must not splice old parts in.

tests/airflow/test_dags.py arms an emulator fault (HTTP 500 on every attempt at part 3) and runs
``airflow dags test adt_source_changed -c '{"source": "<file>"}'``. Try 1 uploads parts 1 and 2,
checkpoints them, then gives up on part 3. The ``on_retry_callback`` appends bytes to the source and
removes the fault through the emulator's control plane (``ADT_TEST_EMULATOR_URL``), so try 2 finds a
checkpoint for a different source and has to start a clean upload.
"""

from __future__ import annotations

import os
import urllib.request
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.operators.files import LocalFilesystemToDatabricksVolumeOperator

MiB = 1024 * 1024
DESTINATION = "/Volumes/main/default/landing/adt/source_changed.bin"
APPENDED = b"appended between tries\n" * 40_000  # about 0.9 MiB


def change_source_and_heal(context: Any) -> None:
    """Between try 1 and try 2: grow the source file and stop the emulator failing part 3."""
    source = context["params"]["source"]
    with open(source, "ab") as f:
        f.write(APPENDED)
    url = os.environ["ADT_TEST_EMULATOR_URL"]
    req = urllib.request.Request(f"{url}/_emulator/faults", method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
    print(f"ADT-TEST on_retry_callback: appended {len(APPENDED)} bytes to {source}; faults cleared")


with DAG(
    dag_id="adt_source_changed",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"source": Param("/tmp/adt-source-changed.bin", type="string")},
    tags=["test"],
) as dag:
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload",
        local_path="{{ params.source }}",
        volume_path=DESTINATION,
        part_size_bytes=5 * MiB,
        multipart_threshold_bytes=5 * MiB,
        parallelism=1,  # parts in order: 1 and 2 are checkpointed before part 3 fails
        transfer_retry=RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1),
        retries=1,
        retry_delay=timedelta(seconds=1),
        on_retry_callback=change_source_and_heal,
    )
