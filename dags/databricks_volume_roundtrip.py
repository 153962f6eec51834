"""Upload a large file to a Unity Catalog Volume, download it back and verify it byte for byte.

Trigger it from the UI with your own sizes and paths (Params). Both transfers checkpoint every part or
chunk: if a try dies (worker killed, timeout, network), the retry resumes where it stopped.
Runs offline against the bundled emulator when AIRFLOW_CONN_DATABRICKS_DEFAULT points at it
(``make demo`` does that), or against a real workspace with a real ``databricks_default`` connection.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)

MiB = 1024 * 1024

with DAG(
    dag_id="databricks_volume_roundtrip",
    description="Large upload to a Volume, resilient download back, SHA-256 comparison",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["databricks", "transfer", "example"],
    params={
        "size_mib": Param(256, type="integer", minimum=0, description="size of the generated file"),
        "local_dir": Param(os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"), type="string"),
        "volume_dir": Param(
            "/Volumes/main/default/landing/roundtrip",
            type="string",
            description="/Volumes/<catalog>/<schema>/<volume>/<folder>",
        ),
        "part_size_mib": Param(16, type="integer", minimum=5),
        "multipart_threshold_mib": Param(
            8, type="integer", minimum=0, description="files from this size up go multipart"
        ),
        "parallelism": Param(4, type="integer", minimum=1, maximum=64),
        "bandwidth_limit_mib_s": Param(0, type="number", minimum=0, description="0: unlimited"),
    },
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
) as dag:

    @task
    def make_source(params: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """A file of random bytes (stands in for your export); kept if it already has the right size."""
        assert params is not None and run_id is not None
        os.makedirs(params["local_dir"], exist_ok=True)
        path = os.path.join(params["local_dir"], "source.bin")
        size = int(params["size_mib"]) * MiB
        if not (os.path.exists(path) and os.path.getsize(path) == size):
            with open(path, "wb") as f:
                for _ in range(int(params["size_mib"])):
                    f.write(os.urandom(MiB))
        return path

    source = make_source()

    upload = LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload",
        local_path="{{ ti.xcom_pull(task_ids='make_source') }}",
        volume_path="{{ params.volume_dir }}/{{ ds }}/source.bin",
        part_size_bytes="{{ params.part_size_mib * 1048576 }}",
        multipart_threshold_bytes="{{ params.multipart_threshold_mib * 1048576 }}",
        parallelism="{{ params.parallelism }}",
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_limit_mib_s * 1048576 }}",
    )

    download = DatabricksVolumeToLocalFilesystemOperator(
        task_id="download",
        volume_path="{{ params.volume_dir }}/{{ ds }}/source.bin",
        local_path="{{ params.local_dir }}/roundtrip.bin",
        parallelism="{{ params.parallelism }}",
        bandwidth_limit_bytes_per_s="{{ params.bandwidth_limit_mib_s * 1048576 }}",
    )

    @task
    def verify(upload_result: dict[str, Any], download_result: dict[str, Any]) -> dict[str, Any]:
        """The bytes that came back are the bytes that went up."""
        h = hashlib.sha256()
        with open(download_result["destination"], "rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        if not (h.hexdigest() == upload_result["sha256"] == download_result["sha256"]):
            up, down = upload_result["sha256"], download_result["sha256"]
            raise ValueError(f"SHA-256 mismatch: uploaded {up}, downloaded {down}")
        summary = {
            "bytes": upload_result["bytes"],
            "sha256": upload_result["sha256"],
            "upload_mib_s": upload_result["mib_per_s"],
            "upload_parts": upload_result["parts"],
            "upload_parts_resumed": upload_result["parts_resumed"],
            "download_mib_s": download_result["mib_per_s"],
            "download_chunks_resumed": download_result["chunks_resumed"],
        }
        print(f"ROUNDTRIP SUMMARY {summary}")
        return summary

    source >> upload >> download
    verify(upload.output, download.output)  # type: ignore[arg-type]  # XComArgs resolve at run time
