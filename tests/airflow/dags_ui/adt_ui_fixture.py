"""A DAG whose task instances the Transfer UI API tests write records for (through the REST API).

``hold`` stays running while the file named by the run's ``conf.hold_file`` exists, so the tests see a running
task instance; ``mapped`` fails at once on both map indexes (recently failed transfers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pendulum
from airflow.sdk import DAG, task

with DAG(
    dag_id="adt_ui_fixture",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 0},
):

    @task
    def hold(**context: Any) -> None:
        path = str((context["dag_run"].conf or {}).get("hold_file", ""))
        deadline = time.monotonic() + 600
        while path and os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.5)

    @task
    def mapped(n: int) -> None:
        raise RuntimeError(f"fixture failure {n}")

    hold()
    mapped.expand(n=[0, 1])
