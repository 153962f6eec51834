"""A Volume sync that tests/airflow/test_real_scheduler_sync.py kills mid-way: the small files are sent
and recorded first, the one large file is paced by a bandwidth limit so the kill lands between its parts."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.sync import DatabricksVolumeSyncOperator

MiB = 1024 * 1024

with DAG(
    dag_id="resume_sync",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    params={
        "local_dir": Param("", type="string"),
        "volume_path": Param("", type="string"),
        "bandwidth_mib_s": Param(0, type="number"),
    },
):
    DatabricksVolumeSyncOperator(
        task_id="sync",
        local_dir="{{ params.local_dir }}",
        volume_path="{{ params.volume_path }}",
        concurrency=5,  # the large file takes one slot, the small files the other four
        parallelism=2,
        part_size_bytes=8 * MiB,
        multipart_threshold_bytes=8 * MiB,
        # every finished file is recorded at once, so all small files are in the manifest before the kill
        manifest_every_files=1,
        # only try 1 is paced (long enough to be caught between parts); the retry runs at full speed
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_mib_s * 1048576 if ti.try_number == 1 else 0 }}",
        progress_interval_s=2,
    )
