"""Upload then download one small file, for the OpenLineage checks in tests/airflow/test_lineage_dag.py."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.files import (
    DatabricksVolumeToLocalFilesystemOperator,
    LocalFilesystemToDatabricksVolumeOperator,
)

with DAG(
    dag_id="adt_lineage",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "source": Param("/tmp/adt-lineage.bin", type="string"),
        "target": Param("/tmp/adt-lineage-copy.bin", type="string"),
    },
    tags=["test"],
) as dag:
    upload = LocalFilesystemToDatabricksVolumeOperator(
        task_id="upload",
        local_path="{{ params.source }}",
        volume_path="/Volumes/main/default/landing/adt/lineage.bin",
    )
    download = DatabricksVolumeToLocalFilesystemOperator(
        task_id="download",
        volume_path="/Volumes/main/default/landing/adt/lineage.bin",
        local_path="{{ params.target }}",
    )
    upload >> download
