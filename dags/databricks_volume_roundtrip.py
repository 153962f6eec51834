"""Upload a large file to a Unity Catalog Volume, download it back and verify it byte for byte.

Two DAGs share this code. ``databricks_volume_roundtrip`` has no schedule: trigger it from the UI with
your own sizes and paths (the Params form). ``databricks_volume_roundtrip_daily`` is the scheduled
variant (@daily, with the defaults), kept apart so that unpausing the one you trigger by hand does not
also start a scheduled run that queues your run behind it. Runs without a logical date (how Airflow 3
triggers by default) use the day of ``dag_run.run_after`` in the Volume path.

Both transfers checkpoint every part or chunk: if a try dies (worker killed, timeout, network), the retry
resumes where it stopped. Runs offline against the bundled emulator when AIRFLOW_CONN_DATABRICKS_DEFAULT
points at it (``make demo`` does that), or against a real workspace with a real ``databricks_default``.
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
# manual runs have no logical date (so no `ds`); every run has run_after
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
REMOTE_FILE = "{{ params.volume_dir }}/" + RUN_DAY + "/source.bin"
BANDWIDTH = "{{ params.bandwidth_limit_mib_s * 1048576 if params.bandwidth_limit_mib_s else '' }}"


def params() -> dict[str, Param]:
    """Fresh Param objects for each DAG (titles and descriptions are what the trigger form shows)."""
    return {
        "size_mib": Param(
            256,
            type="integer",
            minimum=0,
            title="File size (MiB)",
            description="Size of the file of random bytes that is uploaded and downloaded back.",
        ),
        "local_dir": Param(
            os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"),
            type="string",
            minLength=1,
            title="Local folder",
            description="Folder on the worker for the generated file (source.bin) and the download "
            "(roundtrip.bin).",
        ),
        "volume_dir": Param(
            "/Volumes/main/default/landing/roundtrip",
            type="string",
            pattern="^/Volumes/[^/]+/[^/]+/[^/]+(/.*)?$",
            title="Volume folder",
            description="/Volumes/<catalog>/<schema>/<volume>/<folder>; the file goes to "
            "<folder>/<day of the run>/source.bin.",
        ),
        "part_size_mib": Param(
            None,
            type=["null", "integer"],
            minimum=5,
            title="Upload part size (MiB)",
            description="Optional. Empty: 16 MiB, raised as needed to stay within 10,000 parts.",
        ),
        "multipart_threshold_mib": Param(
            8,
            type="integer",
            minimum=0,
            title="Multipart from (MiB)",
            description="Files from this size up are uploaded in parallel parts; smaller ones in one PUT.",
        ),
        "parallelism": Param(
            4,
            type="integer",
            minimum=1,
            maximum=64,
            title="Parallel connections",
            description="Parts or chunks in flight at once (memory is about this times the part size).",
        ),
        "bandwidth_limit_mib_s": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Bandwidth limit (MiB/s)",
            description="Optional. Empty or 0: unlimited.",
        ),
    }


@task
def make_source(params: dict[str, Any] | None = None) -> str:
    """A file of random bytes (stands in for your export); kept if it already has the right size."""
    assert params is not None
    os.makedirs(params["local_dir"], exist_ok=True)
    path = os.path.join(params["local_dir"], "source.bin")
    size = int(params["size_mib"]) * MiB
    if not (os.path.exists(path) and os.path.getsize(path) == size):
        with open(path, "wb") as f:
            for _ in range(int(params["size_mib"])):
                f.write(os.urandom(MiB))
    return path


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


def roundtrip_dag(dag_id: str, schedule: str | None, description: str) -> DAG:
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["databricks", "transfer", "example"],
        params=params(),
        default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    ) as dag:
        source = make_source()
        upload = LocalFilesystemToDatabricksVolumeOperator(
            task_id="upload",
            local_path="{{ ti.xcom_pull(task_ids='make_source') }}",
            volume_path=REMOTE_FILE,
            part_size_bytes="{{ params.part_size_mib * 1048576 if params.part_size_mib else '' }}",
            multipart_threshold_bytes="{{ params.multipart_threshold_mib * 1048576 }}",
            parallelism="{{ params.parallelism }}",
            bandwidth_limit_bytes_per_s=BANDWIDTH,
        )
        download = DatabricksVolumeToLocalFilesystemOperator(
            task_id="download",
            volume_path=REMOTE_FILE,
            local_path="{{ params.local_dir }}/roundtrip.bin",
            parallelism="{{ params.parallelism }}",
            bandwidth_limit_bytes_per_s=BANDWIDTH,
        )
        source >> upload >> download
        verify(upload.output, download.output)  # type: ignore[arg-type]  # XComArgs resolve at run time
    return dag


manual = roundtrip_dag(
    "databricks_volume_roundtrip",
    None,
    "Trigger by hand: large upload to a Volume, resilient download back, SHA-256 comparison",
)
daily = roundtrip_dag(
    "databricks_volume_roundtrip_daily",
    "@daily",
    "Scheduled daily with the default Params: upload to a Volume, download back, SHA-256 comparison",
)
