"""``make demo``'s script, run as a user runs it: its upload's first try dies and the Airflow retry resumes.

One run of ``scripts/demo.py`` (64 MiB: four 16 MiB parts, the outage after any two), then its printed
summary and the numbers behind it (``--summary-json``) are checked against the claims the demo makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .conftest import REPO

pytestmark = pytest.mark.airflow

MiB = 1024 * 1024
SIZE_MIB = 64
ZEROBUS_EVENTS = 5000
SYNC_FILES = 300


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "summary.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env["PYTHONPATH"] = str(REPO)  # this checkout's package, in the script and the DAG runs it starts
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            "--size-mib",
            str(SIZE_MIB),
            "--azure-size-mib",
            "16",
            "--zerobus-events",
            str(ZEROBUS_EVENTS),
            "--sync-files",
            str(SYNC_FILES),
            "--summary-json",
            str(out),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert out.exists(), (
        f"no summary written (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc, json.loads(out.read_text())


def test_demo_succeeds_and_prints_the_resumed_retry(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, summary = demo
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "CHECK FAILED" not in proc.stdout
    # the Azure DAG moved the file local -> Blob -> Volume -> Blob -> local unchanged
    assert summary["azure"]["sha256_match"] is True and summary["azure"]["bytes"] == 16 * 1024 * 1024
    assert "identical after local -> Blob -> Volume -> Blob -> local" in proc.stdout
    assert summary["upload"]["problems"] == []
    assert all(d["ok"] for d in summary["dags"].values())
    lines = proc.stdout.splitlines()
    try1 = next(line for line in lines if line.startswith("upload try 1"))
    try2 = next(line for line in lines if line.startswith("upload try 2"))
    assert "up_for_retry" in try1 and "RetryBudgetExceeded: gave up after" in try1
    assert "success" in try2 and "parts_resumed=2 " in try2 and f"bytes_resumed={32 * MiB} " in try2
    assert "and 0 of the 2 parts try 1 delivered (0 bytes again)" in proc.stdout


def test_first_try_died_mid_way_and_the_retry_sent_only_the_rest(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    upload = demo[1]["upload"]
    assert upload["try1_seen"] == [1, "up_for_retry"]
    assert [t["try_number"] for t in upload["tries"]] == [1, 2] and upload["tries"][-1]["state"] == "success"
    one, two = upload["try1"], upload["try2"]
    # the emulator accepted two parts before the outage, refused every later PUT of the first try ...
    assert len(one["accepted_parts"]) == 2 and one["accepted_bytes"] == 32 * MiB
    assert one["refused"] >= 8 and upload["outage_refused"] == one["refused"]
    # ... and got only the other two from the retry, which resumed the first two from its checkpoint
    assert sorted(one["accepted_parts"] + two["accepted_parts"]) == [1, 2, 3, 4] and two["refused"] == 0
    assert upload["resent_parts"] == [] and upload["resent_bytes"] == 0
    xcom = upload["xcom"]
    assert (xcom["parts"], xcom["parts_resumed"], xcom["bytes_resumed"]) == (4, 2, 32 * MiB)
    assert xcom["bytes_sent"] == SIZE_MIB * MiB - 32 * MiB
    assert demo[1]["roundtrip"]["sha256"] == xcom["sha256"]


def test_zerobus_events_all_reached_the_table_and_duplicates_stayed_in_the_window(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, summary = demo
    zb = summary["zerobus"]
    assert zb["problems"] == [] and summary["dags"]["zerobus_ingest"]["ok"]
    assert zb["distinct_ids"] == ZEROBUS_EVENTS and zb["xcom"]["records"] == ZEROBUS_EVENTS
    # the planned reset after a commit made the SDK resend: duplicates, but only inside the window
    assert zb["connections_dropped"] == 1
    assert 0 < zb["duplicates"] <= zb["xcom"]["duplicates_window_records"]
    assert zb["rows"] == ZEROBUS_EVENTS + zb["duplicates"]
    assert zb["distinct_dedupe_keys"] == ZEROBUS_EVENTS  # exact de-duplication by the key column
    assert f"{ZEROBUS_EVENTS} distinct ids, {zb['duplicates']} duplicates" in proc.stdout


def test_the_second_sync_run_sends_and_reads_nothing(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, summary = demo
    sync = summary["sync"]
    assert sync["problems"] == []
    first, second = sync["first"], sync["second"]
    assert (first["uploaded"], first["failed"]) == (SYNC_FILES, 0)
    assert (second["uploaded"], second["skipped"], second["files_hashed"]) == (0, SYNC_FILES, 0)
    assert f"run 2 sent 0, read 0 files ({SYNC_FILES} hashes from the cache)" in proc.stdout


def test_the_demo_prints_each_transfer_tab(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, summary = demo
    tabs = summary["transfer_tabs"]
    upload = [t for t in tabs if "/dags/databricks_volume_roundtrip/" in t and "/tasks/upload/" in t]
    assert len(upload) == 1 and upload[0].endswith("/tasks/upload/plugin/transfer"), tabs
    assert upload[0].startswith("http://localhost:8080/dags/")
    assert any("/dags/zerobus_ingest/" in t for t in tabs) and any(
        "/dags/databricks_volume_sync/" in t for t in tabs
    )
    for tab in tabs:
        assert f"  {tab}" in proc.stdout
