"""Every argument of our operators, sensor and trigger is documented where users read it, and templated
where a UI Param would set it."""

from __future__ import annotations

import inspect
import re

import pytest
from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_databricks_transfer.operators.azure_blob import (
    AzureBlobToDatabricksVolumeOperator,
    AzureBlobToLocalFilesystemOperator,
    DatabricksVolumeToAzureBlobOperator,
    LocalFilesystemToAzureBlobOperator,
)
from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)
from airflow_databricks_transfer.operators.sync import DatabricksVolumeSyncOperator
from airflow_databricks_transfer.operators.zerobus import ZerobusIngestOperator
from airflow_databricks_transfer.sensors.files import DatabricksVolumeFileSensor
from airflow_databricks_transfer.triggers.files import DatabricksVolumeFileTrigger

PUBLIC = [
    LocalFilesystemToDatabricksVolumeOperator,
    DatabricksVolumeToLocalFilesystemOperator,
    DatabricksVolumeFileSensor,
    DatabricksVolumeFileTrigger,
    AzureBlobToLocalFilesystemOperator,
    LocalFilesystemToAzureBlobOperator,
    AzureBlobToDatabricksVolumeOperator,
    DatabricksVolumeToAzureBlobOperator,
    ZerobusIngestOperator,
]
AIRFLOW_BASES = (BaseOperator, BaseSensorOperator)


def own_init_params(cls: type) -> set[str]:
    """Arguments of every __init__ in the class's MRO that this package wrote (not Airflow's own)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("airflow_databricks_transfer"):
            continue
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    return names


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_init_argument_has_a_param_line(cls: type) -> None:
    documented = set(re.findall(r":param (\w+):", cls.__doc__ or ""))
    missing = own_init_params(cls) - documented
    assert not missing, f"{cls.__name__} lacks :param: lines for {sorted(missing)}"
    # and nothing documented that does not exist (a renamed argument leaves a stale line)
    assert not documented - own_init_params(cls), f"stale :param: lines in {cls.__name__}"


def test_the_guard_sees_inherited_common_arguments() -> None:
    params = own_init_params(DatabricksVolumeToLocalFilesystemOperator)
    common = {
        "databricks_conn_id",
        "overwrite",
        "parallelism",
        "bandwidth_limit_bytes_per_s",
        "use_presigned_urls",
        "progress_interval_s",
        "checkpoint_key",
        "transfer_retry",
    }
    assert common | {"fsync", "chunk_size_bytes", "offset", "length"} <= params


def test_download_templates_its_numeric_and_digest_arguments() -> None:
    fields = set(DatabricksVolumeToLocalFilesystemOperator.template_fields)
    assert {"chunk_size_bytes", "expected_sha256", "offset", "length"} <= fields
    assert {"local_path", "volume_path", "parallelism", "bandwidth_limit_bytes_per_s"} <= fields


def test_sensor_templates_stable_checks() -> None:
    assert "stable_checks" in DatabricksVolumeFileSensor.template_fields


def test_zerobus_ingest_templates_its_numbers_and_stream_options() -> None:
    fields = set(ZerobusIngestOperator.template_fields)
    assert {"table_name", "source_path", "records", "batch_records", "flush_every_batches"} <= fields
    assert {"max_inflight_records", "flush_timeout_ms", "server_lack_of_ack_timeout_ms"} <= fields


def test_sync_templates_its_manifest_cadence_and_pace() -> None:
    op = DatabricksVolumeSyncOperator(
        task_id="sync",
        local_dir="/tmp/src",
        volume_path="/Volumes/main/default/landing/x",
        manifest_every_files="{{ params.every }}",
        manifest_every_s="{{ params.seconds }}",
        bandwidth_limit_bytes_per_s="{{ params.rate }}",
    )
    op.render_template_fields({"params": {"every": 3, "seconds": 2.5, "rate": 1048576}})
    options = op._options()
    assert (options.manifest_every_files, options.manifest_every_s) == (3, 2.5)
    assert options.upload.bandwidth_limit_bytes_per_s == 1048576
    op.manifest_every_files = "0"  # a manifest write after every zero files is no cadence
    with pytest.raises(AirflowFailException, match="manifest_every_files"):
        op._options()
