"""A deferrable sensor waits for files that another task lands in a Volume, then they are fetched.

``wait_for_drop`` defers to the triggerer (no worker slot held) until ``*.csv`` files appear under the
drop folder and their sizes stop changing (``producer`` lands them first, standing in for an outside
system). Afterwards the first match is downloaded.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from airflow_databricks_transfer.operators.files import DatabricksVolumeToLocalFilesystemOperator
from airflow_databricks_transfer.sensors.files import DatabricksVolumeFileSensor

with DAG(
    dag_id="databricks_volume_sensor",
    description="Deferrable sensor on a Volume glob, fed by an upload task",
    schedule=timedelta(hours=6),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["databricks", "sensor", "example"],
    params={
        "drop_dir": Param("/Volumes/main/default/landing/drop", type="string"),
        "local_dir": Param(os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"), type="string"),
        "delay_s": Param(3, type="number", minimum=0, description="how long the producer waits"),
    },
) as dag:
    wait_for_drop = DatabricksVolumeFileSensor(
        task_id="wait_for_drop",
        path="{{ params.drop_dir }}/{{ ds }}/*.csv",
        stable_checks=1,
        poke_interval=2,
        timeout=600,
        deferrable=True,
    )

    @task
    def producer(params: dict[str, Any] | None = None, ds: str | None = None) -> list[str]:
        """Stands in for an upstream system dropping files; uploads two small CSVs after a delay."""
        assert params is not None and ds is not None
        time.sleep(float(params["delay_s"]))
        hook = DatabricksFilesHook()
        os.makedirs(params["local_dir"], exist_ok=True)
        sent = []
        for name in ("orders.csv", "customers.csv"):
            local = os.path.join(params["local_dir"], name)
            with open(local, "w") as f:
                f.write("id,value\n" + "".join(f"{i},{i * i}\n" for i in range(1000)))
            target = f"{params['drop_dir']}/{ds}/{name}"
            hook.upload_file(local, target)
            sent.append(target)
        return sent

    fetch = DatabricksVolumeToLocalFilesystemOperator(
        task_id="fetch_first_match",
        volume_path="{{ (ti.xcom_pull(task_ids='wait_for_drop') | dictsort | first)[0] }}",
        local_path="{{ params.local_dir }}/first_match.csv",
    )

    # The producer stands in for an outside system. It runs first so the DAG also completes under
    # `airflow dags test`, which runs one task at a time and a deferred trigger inline.
    producer() >> wait_for_drop >> fetch
