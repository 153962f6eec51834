"""A Zerobus ingest that tests/airflow/test_real_scheduler_zerobus.py kills mid-stream (paced by the
emulator's commit interval: every flush waits for a commit, so half-way lasts long enough to be caught)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_databricks_transfer.operators.zerobus import ZerobusIngestOperator

with DAG(
    dag_id="resume_zerobus_ingest",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    params={
        "source": Param("", type="string"),
        "table": Param("", type="string"),
        "batch_records": Param(50, type="integer"),
        "flush_every_batches": Param(2, type="integer"),
    },
):
    ZerobusIngestOperator(
        task_id="ingest",
        source_path="{{ params.source }}",
        table_name="{{ params.table }}",
        batch_records="{{ params.batch_records }}",
        flush_every_batches="{{ params.flush_every_batches }}",
        flush_interval_s=0,
        dedupe_key="dedupe_key",
        progress_interval_s=2,
    )
