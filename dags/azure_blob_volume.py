"""Azure Blob Storage <-> Unity Catalog Volume, both ways, verified end to end by SHA-256.

A generated local file goes up to a blob (staged blocks, each with Content-MD5), is copied Blob ->
Volume and Volume -> Blob with no local copy (ranges of one side become parts or blocks of the
other), comes back down (parallel ranged GETs, checked against the source's SHA-256 before the
rename), and ``verify`` compares the bytes with the source. No schedule: trigger it from the UI with
your own sizes and paths (the Params form). Runs without a logical date use the day of
``dag_run.run_after`` in the blob and Volume paths.

Every transfer checkpoints each finished part, block or range in the task state store: when a try
dies (worker killed, timeout, network), Airflow's retry resumes where it stopped. Uses the ``wasb_default``
and ``databricks_default`` connections: Azurite and the bundled Files API emulator when the
``AIRFLOW_CONN_*`` variables point at them (``make demo`` does that), or a real storage account and
workspace.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_databricks_transfer.operators.azure_blob import (
    AzureBlobToDatabricksVolumeOperator,
    AzureBlobToLocalFilesystemOperator,
    DatabricksVolumeToAzureBlobOperator,
    LocalFilesystemToAzureBlobOperator,
)

MiB = 1024 * 1024
# manual runs have no logical date (so no `ds`); every run has run_after
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
SOURCE_BLOB = "{{ params.blob_dir }}/" + RUN_DAY + "/source.bin"
BACK_BLOB = "{{ params.blob_dir }}/" + RUN_DAY + "/from_volume.bin"
VOLUME_FILE = "{{ params.volume_dir }}/" + RUN_DAY + "/from_blob.bin"
PART_SIZE = "{{ params.part_size_mib * 1048576 if params.part_size_mib else '' }}"
BANDWIDTH = "{{ params.bandwidth_limit_mib_s * 1048576 if params.bandwidth_limit_mib_s else '' }}"
# whatever arrives locally must hash to what was uploaded, or the download fails (and is discarded)
UPLOADED_SHA256 = "{{ ti.xcom_pull(task_ids='upload_blob')['sha256'] }}"
STEPS = ("upload_blob", "blob_to_volume", "volume_to_blob", "download")


def params() -> dict[str, Param]:
    """Titles and descriptions are what the trigger form shows."""
    return {
        "size_mib": Param(
            256,
            type="integer",
            minimum=1,
            title="File size (MiB)",
            description="Size of the file of random bytes that makes the round trip.",
        ),
        "local_dir": Param(
            os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"),
            type="string",
            minLength=1,
            title="Local folder",
            description="Folder on the worker for the generated file (azure_source.bin) and the "
            "download (azure_roundtrip.bin).",
        ),
        "container": Param(
            "adt-demo",
            type="string",
            pattern="^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
            title="Blob container",
            description="Created if missing: 3-63 lowercase letters, digits and hyphens.",
        ),
        "blob_dir": Param(
            "roundtrip",
            type="string",
            minLength=1,
            title="Blob folder",
            description="Blob name prefix; the blobs are <folder>/<day of the run>/source.bin and "
            "from_volume.bin.",
        ),
        "volume_dir": Param(
            "/Volumes/main/default/landing/azure",
            type="string",
            pattern="^/Volumes/[^/]+/[^/]+/[^/]+(/.*)?$",
            title="Volume folder",
            description="/Volumes/<catalog>/<schema>/<volume>/<folder>; the copy goes to "
            "<folder>/<day of the run>/from_blob.bin.",
        ),
        "part_size_mib": Param(
            None,
            type=["null", "integer"],
            minimum=5,
            title="Part / block size (MiB)",
            description="Optional. Empty: 8 MiB blocks to Azure, 16 MiB parts to the Volume, raised as "
            "needed to stay within the part limits.",
        ),
        "parallelism": Param(
            4,
            type="integer",
            minimum=1,
            maximum=64,
            title="Parallel connections",
            description="Parts, blocks or ranges in flight at once (memory is about this times the "
            "part size).",
        ),
        "bandwidth_limit_mib_s": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Bandwidth limit (MiB/s)",
            description="Optional, per transfer. Empty or 0: unlimited.",
        ),
    }


@task
def make_source(params: dict[str, Any] | None = None) -> str:
    """A file of random bytes (stands in for your export); kept if it already has the right size."""
    assert params is not None
    os.makedirs(params["local_dir"], exist_ok=True)
    path = os.path.join(params["local_dir"], "azure_source.bin")
    size = int(params["size_mib"]) * MiB
    if not (os.path.exists(path) and os.path.getsize(path) == size):
        with open(path, "wb") as f:
            for _ in range(int(params["size_mib"])):
                f.write(os.urandom(MiB))
    return path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


@task
def verify(
    source: str,
    uploaded: dict[str, Any],
    in_volume: dict[str, Any],
    back_in_blob: dict[str, Any],
    download: dict[str, Any],
) -> dict[str, Any]:
    """The file that came back through Blob -> Volume -> Blob is the file that was generated."""
    results = dict(zip(STEPS, (uploaded, in_volume, back_in_blob, download), strict=True))
    source_sha, back_sha = _sha256(source), _sha256(download["destination"])
    if not (source_sha == back_sha == results["upload_blob"]["sha256"] == download["sha256"]):
        raise ValueError(
            f"SHA-256 mismatch: source {source_sha}, uploaded {results['upload_blob']['sha256']}, "
            f"came back {back_sha}"
        )
    sizes = {step: results[step]["bytes"] for step in STEPS}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the steps moved different sizes: {sizes}")
    summary = {
        "bytes": download["bytes"],
        "sha256": source_sha,
        "sha256_match": True,
        "mib_per_s": {step: results[step]["mib_per_s"] for step in STEPS},
        "seconds": {step: results[step]["seconds"] for step in STEPS},
        "volume_path": results["blob_to_volume"]["destination"],
        "download_verified": download["verified"],
    }
    print(f"AZURE ROUNDTRIP SUMMARY {summary}")
    return summary


with DAG(
    dag_id="azure_blob_volume_roundtrip",
    description="Trigger by hand: local -> Blob -> Volume -> Blob -> local, resumable, SHA-256 compared",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # the paths carry the day, so two runs on one day would share them
    tags=["azure", "databricks", "transfer", "example"],
    params=params(),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
):
    transfer: dict[str, Any] = {
        "container_name": "{{ params.container }}",
        "parallelism": "{{ params.parallelism }}",
        "bandwidth_limit_bytes_per_s": BANDWIDTH,
    }
    source = make_source()
    upload_blob = LocalFilesystemToAzureBlobOperator(
        task_id="upload_blob",
        local_path="{{ ti.xcom_pull(task_ids='make_source') }}",
        blob_name=SOURCE_BLOB,
        block_size_bytes=PART_SIZE,
        create_container=True,
        **transfer,
    )
    blob_to_volume = AzureBlobToDatabricksVolumeOperator(
        task_id="blob_to_volume",
        blob_name=SOURCE_BLOB,
        volume_path=VOLUME_FILE,
        part_size_bytes=PART_SIZE,
        **transfer,
    )
    volume_to_blob = DatabricksVolumeToAzureBlobOperator(
        task_id="volume_to_blob",
        volume_path=VOLUME_FILE,
        blob_name=BACK_BLOB,
        part_size_bytes=PART_SIZE,
        **transfer,
    )
    download = AzureBlobToLocalFilesystemOperator(
        task_id="download",
        blob_name=BACK_BLOB,
        local_path="{{ params.local_dir }}/azure_roundtrip.bin",
        expected_sha256=UPLOADED_SHA256,
        **transfer,
    )
    source >> upload_blob >> blob_to_volume >> volume_to_blob >> download
    outputs = (upload_blob.output, blob_to_volume.output, volume_to_blob.output, download.output)
    verify(source, *outputs)  # type: ignore[arg-type]  # XComArgs resolve at run time
