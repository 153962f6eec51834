"""Generate a JSON Lines file of events and stream it into a Delta table through Databricks Zerobus.

``make_events`` writes ``events.jsonl`` (kept when it already holds the asked number of events), then
``ingest`` streams it into the table in batches. After every acknowledged flush the position in the file
(byte offset and line) is checkpointed in the task state store: when a try dies, Airflow's retry continues
after the last acknowledged line. Records a dead try had sent but not seen acknowledged may arrive twice
(at most ``flush_every_batches`` x ``batch_records`` of them); each row carries ``dedupe_key``, the same
for both copies, so a downstream MERGE or window query drops them exactly.

Uses the connection named by the ``conn_id`` Param (type ``databricks``: host = workspace URL, login and
password = OAuth client id and secret, extra ``zerobus_endpoint``). ``make demo`` points it at the bundled
Zerobus emulator, whose table is ``id BIGINT NOT NULL, user STRING, kind STRING, amount DOUBLE,
dedupe_key STRING``.
"""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_databricks_transfer.operators.zerobus import ZerobusIngestOperator

KINDS = ("view", "click", "purchase", "refund")


def params() -> dict[str, Param]:
    """Titles and descriptions are what the trigger form shows."""
    return {
        "events": Param(10_000, type="integer", minimum=1, title="Events", description="Lines to generate."),
        "local_dir": Param(
            os.environ.get("ADT_DEMO_DIR", "/tmp/adt-demo"),
            type="string",
            minLength=1,
            title="Local folder",
            description="Folder on the worker for events.jsonl.",
        ),
        "table": Param(
            "main.default.events",
            type="string",
            pattern=r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$",
            title="Table",
            description="catalog.schema.table; Zerobus never creates tables, so it must exist.",
        ),
        "conn_id": Param(
            "databricks_default",
            type="string",
            title="Connection",
            description="A databricks connection with the OAuth client and extra zerobus_endpoint.",
        ),
        "batch_records": Param(
            500,
            type="integer",
            minimum=1,
            title="Records per batch",
            description="Records per ingest call (one acknowledgement each).",
        ),
        "flush_every_batches": Param(
            4,
            type="integer",
            minimum=1,
            title="Batches per flush",
            description="A checkpoint follows each acknowledged flush; a killed try resends at most this "
            "many batches.",
        ),
    }


@task
def make_events(params: dict[str, Any] | None = None) -> str:
    """Stands in for your export: one JSON object per line, ids 0..n-1 (so a reader can count)."""
    assert params is not None
    os.makedirs(params["local_dir"], exist_ok=True)
    path = os.path.join(params["local_dir"], "events.jsonl")
    n = int(params["events"])
    if os.path.exists(path):
        with open(path, "rb") as f:
            if sum(1 for _ in f) == n:
                return path  # a retry (or a rerun) ingests the same file, so its checkpoint stays valid
    rng = random.Random(n)  # noqa: S311 - sample data, not secrets
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for i in range(n):
            event = {
                "id": i,
                "user": f"user-{rng.randrange(1000):04d}",
                "kind": rng.choice(KINDS),
                "amount": round(rng.uniform(0, 500), 2),
            }
            f.write(json.dumps(event) + "\n")
    os.replace(tmp, path)
    return path


with DAG(
    dag_id="zerobus_ingest",
    description="Trigger by hand: generate JSON Lines and stream them into a Delta table via Zerobus",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["zerobus", "databricks", "ingest", "example"],
    params=params(),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
):
    events = make_events()
    ZerobusIngestOperator(
        task_id="ingest",
        source_path=events,
        table_name="{{ params.table }}",
        databricks_conn_id="{{ params.conn_id }}",
        batch_records="{{ params.batch_records }}",
        flush_every_batches="{{ params.flush_every_batches }}",
        dedupe_key="dedupe_key",
        progress_interval_s=5,
    )
