"""A Blob -> Volume copy that tests/airflow/test_real_scheduler_azure.py kills mid-transfer (paced by a
bandwidth limit, so half-way lasts long enough to be caught)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.azure_blob import AzureBlobToDatabricksVolumeOperator

MiB = 1024 * 1024

with DAG(
    dag_id="resume_blob_to_volume",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    params={
        "container": Param("", type="string"),
        "blob": Param("", type="string"),
        "volume_path": Param("", type="string"),
        "bandwidth_mib_s": Param(0, type="number"),
    },
):
    AzureBlobToDatabricksVolumeOperator(
        task_id="copy",
        container_name="{{ params.container }}",
        blob_name="{{ params.blob }}",
        volume_path="{{ params.volume_path }}",
        part_size_bytes=8 * MiB,
        parallelism=4,
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_mib_s * 1048576 }}",
        progress_interval_s=2,
        checkpoint_interval_s=0,  # the test bounds re-sent bytes by what the checkpoint held at the kill
    )
