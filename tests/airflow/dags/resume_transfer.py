"""DAGs that the real-scheduler tests kill mid-transfer (paced by a bandwidth limit)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)

MiB = 1024 * 1024
COMMON: dict[str, Any] = {
    "schedule": None,
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "default_args": {"retries": 1, "retry_delay": timedelta(seconds=1)},
}

with DAG(
    dag_id="resume_upload",
    params={
        "source": Param("", type="string"),
        "volume_path": Param("", type="string"),
        "bandwidth_mib_s": Param(0, type="number"),
    },
    **COMMON,
):
    LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload",
        local_path="{{ params.source }}",
        volume_path="{{ params.volume_path }}",
        part_size_bytes=16 * MiB,
        parallelism=4,
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_mib_s * 1048576 }}",
        progress_interval_s=2,
        compute_sha256=False,
        checkpoint_interval_s=0,  # the test bounds re-sent bytes by what the checkpoint held at the kill
    )

with DAG(
    dag_id="resume_download",
    params={
        "volume_path": Param("", type="string"),
        "destination": Param("", type="string"),
        "bandwidth_mib_s": Param(0, type="number"),
    },
    **COMMON,
):
    DatabricksVolumeToLocalFilesystemOperator(
        task_id="download",
        volume_path="{{ params.volume_path }}",
        local_path="{{ params.destination }}",
        chunk_size_bytes=16 * MiB,
        parallelism=4,
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_mib_s * 1048576 }}",
        progress_interval_s=2,
        checkpoint_interval_s=0,  # the test bounds re-fetched bytes by what the checkpoint held at the kill
    )
