"""A paced upload (killed mid-way by the browser test) and a mapped upload, for the Transfer tab."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.files import LocalFilesystemToDatabricksVolumeOperator

MiB = 1024 * 1024

with DAG(
    dag_id="adt_ui_paced",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    params={
        "source": Param("", type="string"),
        "volume_path": Param("", type="string"),
        "small_sources": Param([], type="array"),
        "volume_dir": Param("", type="string"),
        "bandwidth_mib_s": Param(1, type="number"),
    },
):
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload",
        local_path="{{ params.source }}",
        volume_path="{{ params.volume_path }}",
        part_size_bytes=5 * MiB,
        multipart_threshold_bytes=5 * MiB,
        parallelism=2,
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_mib_s * 1048576 }}",
        progress_interval_s=2,
        checkpoint_interval_s=0,
    )
    LocalFilesystemToDatabricksVolumeOperator.partial(
        task_id="mapped_upload",
        volume_path="{{ params.volume_dir }}/{{ ti.map_index }}.bin",
        part_size_bytes=5 * MiB,
        multipart_threshold_bytes=5 * MiB,
        parallelism=2,
    ).expand(local_path=["{{ params.small_sources[0] }}", "{{ params.small_sources[1] }}"])
