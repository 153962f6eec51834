"""Uploads that cannot succeed: a connection that is not defined, and a Volume that does not exist.

Run by tests/airflow/test_dags.py with ``airflow dags test adt_bad_input -c '{"work": "<dir>"}'``; the
test writes ``small.bin`` (1 MiB) and ``multi.bin`` (6 MiB) into ``work`` first. The tasks are
independent, so every one of them runs although the DAG run as a whole fails.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.operators.files import LocalFilesystemToDatabricksVolumeOperator

MiB = 1024 * 1024
MISSING_VOLUME = "/Volumes/main/default/no_such_volume"

with DAG(
    dag_id="adt_bad_input",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"work": Param("/tmp/adt-bad-input", type="string")},
    default_args={"retry_delay": timedelta(seconds=1)},
    tags=["test"],
) as dag:
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="missing_conn",
        databricks_conn_id="no_such_conn",
        local_path="{{ params.work }}/small.bin",
        volume_path="/Volumes/main/default/landing/adt/bad_input/missing_conn.bin",
        retries=0,
    )
    # a Volume that does not exist: no retry can fix that, so the first try must be the last
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="missing_volume_single",
        local_path="{{ params.work }}/small.bin",
        volume_path=f"{MISSING_VOLUME}/x.bin",
        retries=2,
        transfer_retry=RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1),
    )
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="missing_volume_multipart",
        local_path="{{ params.work }}/multi.bin",
        volume_path=f"{MISSING_VOLUME}/x-multipart.bin",
        part_size_bytes=5 * MiB,
        multipart_threshold_bytes=5 * MiB,
        retries=2,
        transfer_retry=RetryPolicy(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1),
    )
