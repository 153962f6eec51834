"""``adt ingest`` end to end: a subprocess streaming files into the Zerobus emulator's Delta tables."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli_support import base_env, error_line, run_cli

pytestmark = pytest.mark.integration


def _env(emu: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(
        tmp_path,
        DATABRICKS_HOST=emu.uc_url,
        DATABRICKS_CLIENT_ID=emu.client_id,
        DATABRICKS_CLIENT_SECRET=emu.client_secret,
        DATABRICKS_ZEROBUS_ENDPOINT=emu.endpoint,
        **extra,
    )


def test_jsonl_and_csv_files_land_in_the_table(zerobus_emulator: Any, tmp_path: Path) -> None:
    table = f"main.default.cli_{uuid.uuid4().hex[:8]}"
    zerobus_emulator.create_table(table, "id BIGINT NOT NULL, body STRING")
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "body": f"row {i}"}) + "\n" for i in range(250)))
    env = _env(zerobus_emulator, tmp_path)

    proc = run_cli(env, "ingest", str(jsonl), "--table", table, "--batch-records", "40", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["records"] == 250 and result["table"] == table
    assert f"{table}: done" in proc.stderr  # progress lines on a non-terminal stderr

    csv = tmp_path / "more.csv"
    csv.write_text("id,body\n" + "".join(f"{i},csv {i}\n" for i in range(250, 260)))
    human = run_cli(env, "ingest", str(csv), "--table", table, "--csv-type", "id=int")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"{csv} -> {table}: 10 records in ")

    rows = zerobus_emulator.read_table(table)
    assert sorted(r["id"] for r in rows) == list(range(260))
    assert not list((tmp_path / "state").rglob("zerobus.ingest-*.json"))  # checkpoints removed on success
    for run in (proc, human):
        assert zerobus_emulator.client_secret not in run.stdout + run.stderr


def test_missing_table_and_bad_secret_fail_in_one_line(zerobus_emulator: Any, tmp_path: Path) -> None:
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"id": 1, "body": "x"}\n')
    env = _env(zerobus_emulator, tmp_path)
    missing = run_cli(env, "ingest", str(jsonl), "--table", "main.default.no_such_table")
    assert missing.returncode == 1
    assert error_line(missing).startswith("adt: error: not found:"), missing.stderr

    table = f"main.default.cli_{uuid.uuid4().hex[:8]}"
    zerobus_emulator.create_table(table, "id BIGINT NOT NULL, body STRING")
    bad = run_cli({**env, "DATABRICKS_CLIENT_SECRET": "wrong-secret"}, "ingest", str(jsonl), "--table", table)
    assert bad.returncode == 1
    assert error_line(bad).startswith("adt: error: authentication failed:"), bad.stderr
    assert "wrong-secret" not in bad.stdout + bad.stderr


def test_a_failed_ingest_resumes_after_the_last_acknowledged_record(
    zerobus_emulator: Any, tmp_path: Path
) -> None:
    """A fatal answer mid-file ends the run (exit 1) with its checkpoint in the state dir; the same command
    again continues after the last acknowledged record instead of starting over."""
    table = f"main.default.cli_{uuid.uuid4().hex[:8]}"
    zerobus_emulator.create_table(table, "id BIGINT NOT NULL, body STRING")
    src = tmp_path / "events.jsonl"
    src.write_text("".join(json.dumps({"id": i, "body": f"row {i}"}) + "\n" for i in range(100)))
    env = _env(zerobus_emulator, tmp_path)
    args = ["ingest", str(src), "--table", table, "--batch-records", "10", "--flush-every-batches", "1"]

    zerobus_emulator.add_fault(route="zerobus.ingest", path=table, nth=6, grpc_code="INVALID_ARGUMENT")
    failed = run_cli(env, *args)
    zerobus_emulator.clear_faults()
    assert failed.returncode == 1, failed.stderr
    landed = {r["id"] for r in zerobus_emulator.read_table(table)}
    assert landed and len(landed) < 100
    assert list((tmp_path / "state").rglob("zerobus.ingest-*.json"))  # the checkpoint stays

    again = run_cli(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["records_resumed"] >= 10 and result["records_sent"] <= 100 - result["records_resumed"]
    rows = zerobus_emulator.read_table(table)
    assert {r["id"] for r in rows} == set(range(100))
    assert len(rows) - 100 <= 10  # at most the batch in flight when it failed comes twice
