"""A deferrable sensor waits for files that another task lands in a Volume, then they are fetched.

``wait_for_drop`` defers to the triggerer (no worker slot held) until ``*.csv`` files appear under the
drop folder and their sizes stop changing (``producer`` lands them first, standing in for an outside
system). Afterwards the first match is downloaded. No schedule: trigger it by hand; a run without a
logical date (the Airflow 3 default) uses the day of ``dag_run.run_after`` in the drop folder.
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

# manual runs have no logical date (so no `ds`); every run has run_after
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

with DAG(
    dag_id="databricks_volume_sensor",
    description="Deferrable sensor on a Volume glob, fed by an upload task",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["databricks", "sensor", "example"],
    # Retries as in production. They also cover apache/airflow#72716 (3.3.1, open): a trigger that fires
    # within seconds can let the scheduler apply the deferral's stale executor event to the resumed try
    # and fail it ("state mismatch"); the retry re-checks and, the files being there, succeeds.
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    params={
        "drop_dir": Param(
            "/Volumes/main/default/landing/drop",
            type="string",
            pattern="^/Volumes/[^/]+/[^/]+/[^/]+(/.*)?$",
            title="Volume drop folder",
            description="/Volumes/<catalog>/<schema>/<volume>/<folder>; files land in "
            "<folder>/<day of the run>/ and the sensor waits for *.csv there.",
        ),
        "local_dir": Param(
            os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"),
            type="string",
            minLength=1,
            title="Local folder",
            description="Folder on the worker for the CSVs the producer writes and the file fetched.",
        ),
        "delay_s": Param(
            3,
            type="number",
            minimum=0,
            title="Producer delay (s)",
            description="How long the producer waits before it lands the files.",
        ),
    },
) as dag:
    wait_for_drop = DatabricksVolumeFileSensor(
        task_id="wait_for_drop",
        path="{{ params.drop_dir }}/" + RUN_DAY + "/*.csv",
        stable_checks=1,
        poke_interval=2,
        timeout=600,
        deferrable=True,
    )

    @task
    def producer(params: dict[str, Any] | None = None, dag_run: Any = None) -> list[str]:
        """Stands in for an upstream system dropping files; uploads two small CSVs after a delay."""
        assert params is not None and dag_run is not None
        ds = (dag_run.logical_date or dag_run.run_after).strftime("%Y-%m-%d")
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
