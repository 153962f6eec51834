"""The Transfer tab's JSON API in a real Airflow 3.3 api-server (simple auth manager, SQLite).

Users: ``admin`` (Admin), ``viewer`` (Viewer: may read every DAG) and ``outsider``, a user with no role:
the simple auth manager has no per-DAG grants outside multi-team mode, so a user without a role is the
one it offers that may read no DAG at all (every DAG check answers 403).

The records are written the way an operator's would land in the task state store, but through the
public REST API (``PUT .../state-store/{key}``) by the test, for task instances of a fixture DAG
(tests/airflow/dags_ui): a 10,000-part upload checkpoint half done, and its ``.ui`` record with a try
that could not close its entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from airflow_databricks_transfer.engine.checkpoint import SourceFingerprint, UploadCheckpoint
from airflow_databricks_transfer.plugins import URL_PREFIX

from .stack import REPO, AirflowStack, wait_for

pytestmark = pytest.mark.airflow

MiB = 1024 * 1024
DAG_ID = "adt_ui_fixture"
DAGS = Path(__file__).resolve().parent / "dags_ui"
PARTS = 10_000
PART = 16 * MiB
SECRET_SESSION = "SESSION-TOKEN-must-never-show"
SAS_ERROR = (
    "RetryBudgetExceeded: gave up after 8 attempts: 503 from "
    "https://acct.blob.core.windows.net/c/big.bin?sv=2024-05-04&sig=SASSIGNATURE123&se=2026-12-01"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("airflow-ui-api")
    env = {
        "PYTHONPATH": str(REPO),  # this worktree's plugin, not the installed one
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,outsider:",
    }
    with AirflowStack(home, DAGS, env) as st:
        st.wait_for_dag(DAG_ID)
        yield st


def token(stack: AirflowStack, user: str) -> str:
    passwords = json.loads((stack.home / "passwords.json").read_text())
    resp = requests.post(
        f"{stack.url}/auth/token", json={"username": user, "password": passwords[user]}, timeout=10
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def bearer(stack: AirflowStack, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(stack, user)}"}


def put_state(
    stack: AirflowStack, run_id: str, task_id: str, key: str, value: Any, map_index: int = -1
) -> None:
    path = stack.task_path(DAG_ID, run_id, task_id) + f"/state-store/{quote(key, safe='')}"
    stack.api("PUT", f"{path}?map_index={map_index}", {"value": value, "expires_at": None})


def checkpoint_records(done: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    src = SourceFingerprint("/data/big.bin", PARTS * PART - 7, 1, 2)
    cp = UploadCheckpoint("/Volumes/main/default/landing/big.bin", src, PART, PARTS, SECRET_SESSION)
    for n in done:
        cp = cp.with_part(n, f'"{hashlib.md5(b"%d" % n).hexdigest()}"', hashlib.sha256(b"%d" % n).digest())
    return cp.head_record(), [cp.segment_record(i) for i in range(cp.segment_count)]


def ui_record(
    try_number: int, inflight: list[int], units_done: int, error: str | None = None
) -> dict[str, Any]:
    return {
        "schema": "airflow-databricks-transfer/ui",
        "version": 1,
        "kind": "files_api.upload",
        "source": "/data/big.bin",
        "destination": "/Volumes/main/default/landing/big.bin",
        "unit": "part",
        "units_total": PARTS,
        "bytes_total": PARTS * PART - 7,
        "parallelism": 4,
        "live": {
            "try_number": try_number,
            "updated_at": time.time(),
            "phase": "uploading",
            "bytes_done": units_done * PART,
            "units_done": units_done,
            "inflight": inflight,
            "rate_bps": 123.0 * MiB,
            "eta_s": 77.0,
        },
        "tries": [
            {"try_number": try_number, "started_at": time.time() - 5, "ended_at": None, "state": "running",
             "resumed_units": 37, "resumed_bytes": 37 * PART, "sent_units": units_done - 37,
             "sent_bytes": (units_done - 37) * PART, "discarded": None, "error": error},
        ],
        "result": None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def run(stack: AirflowStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A run whose ``hold`` task is running (with a half-done 10,000-part upload recorded) and whose two
    ``mapped`` task instances failed (index 1 with a small record)."""
    hold_file = tmp_path_factory.mktemp("hold") / "hold"
    hold_file.write_text("x")
    run_id = stack.trigger(DAG_ID, {"hold_file": str(hold_file)})
    wait_for(lambda: stack.task_instance(DAG_ID, run_id, "hold")["state"] == "running", 180, "hold to run")

    def mapped_failed() -> bool:
        tis = stack.api("GET", stack.task_path(DAG_ID, run_id, "mapped") + "/listMapped")["task_instances"]
        return len(tis) == 2 and all(t["state"] == "failed" for t in tis)

    wait_for(mapped_failed, 180, "both mapped task instances to fail")
    try_number = int(stack.task_instance(DAG_ID, run_id, "hold")["try_number"])
    head, segments = checkpoint_records([*range(1, 5001), PARTS])
    for i, seg in enumerate(segments):
        put_state(stack, run_id, "hold", f"checkpoint.seg.{i}", seg)
    put_state(stack, run_id, "hold", "checkpoint", head)
    put_state(stack, run_id, "hold", "checkpoint.ui", ui_record(try_number, [5001, 5002, 5003, 5004], 5001))
    small_head, small_segments = checkpoint_records([])
    small_head = {**small_head, "part_count": 3, "source": {**small_head["source"], "size": 3 * PART}}
    small_segments = [
        {"first": 1, "count": 3, "done": base64.b64encode(bytes([0b011])).decode(), "etags": {}}
    ]
    put_state(stack, run_id, "mapped", "checkpoint", {**small_head, "segments": 1}, map_index=1)
    put_state(stack, run_id, "mapped", "checkpoint.seg.0", small_segments[0], map_index=1)
    put_state(
        stack,
        run_id,
        "mapped",
        "checkpoint.ui",
        {**ui_record(1, [3], 2, SAS_ERROR), "units_total": 3},
        map_index=1,
    )
    yield run_id
    hold_file.unlink(missing_ok=True)


def transfer_url(
    stack: AirflowStack, run_id: str, task_id: str = "hold", map_index: str = "{MAP_INDEX}"
) -> str:
    q = f"dag_id={DAG_ID}&run_id={quote(run_id, safe='')}&task_id={task_id}&map_index={quote(map_index)}"
    return f"{stack.url}{URL_PREFIX}/api/transfer?{q}"


# ---------------------------------------------------------------------------------------------- auth
def test_no_credentials_is_401_and_a_user_without_access_is_403(stack: AirflowStack, run: str) -> None:
    assert requests.get(transfer_url(stack, run), timeout=30).status_code == 401
    assert requests.get(f"{stack.url}{URL_PREFIX}/api/transfers", timeout=30).status_code == 401
    outsider = bearer(stack, "outsider")
    resp = requests.get(transfer_url(stack, run), headers=outsider, timeout=30)
    assert resp.status_code == 403, resp.text
    assert "5001" not in resp.text
    # authenticated, so the list answers, with nothing the outsider may not read
    listed = requests.get(f"{stack.url}{URL_PREFIX}/api/transfers", headers=outsider, timeout=30)
    assert listed.status_code == 200 and listed.json()["transfers"] == []
    bad = requests.get(transfer_url(stack, run), headers={"Authorization": "Bearer not-a-jwt"}, timeout=30)
    assert bad.status_code == 403


def test_viewer_reads_with_a_bearer_token_or_the_session_cookie(stack: AirflowStack, run: str) -> None:
    resp = requests.get(transfer_url(stack, run), headers=bearer(stack, "viewer"), timeout=30)
    assert resp.status_code == 200, resp.text
    cookie = requests.get(transfer_url(stack, run), cookies={"_token": token(stack, "viewer")}, timeout=30)
    assert cookie.status_code == 200 and cookie.json()["map"] == resp.json()["map"]


def test_static_pages_are_public_and_hold_no_data(stack: AirflowStack) -> None:
    for name in ("index.html", "transfers.html", "app.js", "app.css"):
        resp = requests.get(f"{stack.url}{URL_PREFIX}/static/{name}", timeout=30)
        assert resp.status_code == 200, name
    assert '"../api/"' in requests.get(f"{stack.url}{URL_PREFIX}/static/app.js", timeout=30).text


def test_the_plugin_registers_the_tab_and_the_nav_page(stack: AirflowStack) -> None:
    plugins = stack.api("GET", "/plugins")["plugins"]
    ours = next(p for p in plugins if p["name"] == "databricks_transfer")
    views = {v["name"]: v for v in ours["external_views"]}
    assert (
        views["Transfer"]["destination"] == "task_instance" and views["Transfer"]["url_route"] == "transfer"
    )
    assert "{MAP_INDEX}" in views["Transfer"]["href"] and "{RUN_ID}" in views["Transfer"]["href"]
    assert views["Transfers"]["destination"] == "nav"
    assert [a["url_prefix"] for a in ours["fastapi_apps"]] == [URL_PREFIX]


# ---------------------------------------------------------------------------------------------- payload
def test_10000_part_upload_is_small_and_fast(stack: AirflowStack, run: str) -> None:
    headers = bearer(stack, "admin")
    session = requests.Session()
    session.headers.update(headers)
    url = transfer_url(stack, run)
    session.get(url, timeout=60).raise_for_status()  # the first request imports the app
    times, sizes = [], []
    for _ in range(7):
        started = time.perf_counter()
        resp = session.get(url, timeout=30)
        times.append(time.perf_counter() - started)
        assert resp.status_code == 200
        sizes.append(len(resp.content))
    payload = resp.json()
    median_ms = statistics.median(times) * 1000
    print(
        f"\n10,000-part transfer payload: {sizes[-1]} bytes; response times ms: "
        f"{[round(t * 1000, 1) for t in times]} (median {median_ms:.1f})"
    )
    assert sizes[-1] < 8 * 1024, sizes[-1]
    assert median_ms < 100, times  # the bound, on a local request
    unit_map = payload["map"]
    assert (unit_map["encoding"], unit_map["first"], unit_map["count"]) == ("bitmap", 1, PARTS)
    raw = base64.b64decode(unit_map["done"])
    done = {1 + i for i in range(PARTS) if raw[i // 8] >> (i % 8) & 1}
    assert done == {*range(1, 5001), PARTS}
    assert unit_map["inflight"] == [5001, 5002, 5003, 5004]
    assert payload["ti"]["state"] == "running" and payload["poll"] is True
    assert payload["rate_bps"] == 123.0 * MiB and payload["eta_s"] == 77.0
    assert payload["bytes_done"] == 5001 * PART  # live is ahead of the checkpoint
    text = resp.text
    assert (
        SECRET_SESSION not in text
        and "SASSIGNATURE123" not in text
        and "sig=" not in text.replace("sig=<redacted>", "")
    )


def test_an_unclosed_try_is_shown_from_airflow(stack: AirflowStack, run: str) -> None:
    """``mapped[1]``'s record says its try is still running, but Airflow failed it (as after a SIGKILL):
    the API shows it failed, ended when Airflow says, and the error without the SAS."""
    headers = bearer(stack, "viewer")
    payload = requests.get(transfer_url(stack, run, "mapped", "1"), headers=headers, timeout=30).json()
    (only,) = payload["tries"]
    assert only["state"] == "failed" and only["closed_by"] == "airflow" and only["ended_at"] is not None
    assert "SASSIGNATURE123" not in json.dumps(payload) and "<redacted>" in only["error"]
    assert payload["last_error"] == only["error"]
    hold = requests.get(transfer_url(stack, run), headers=headers, timeout=30).json()
    (current,) = hold["tries"]
    assert current["state"] == "running" and current["resumed_units"] == 37 and "closed_by" not in current


def test_mapped_instances_and_unknown_ones(stack: AirflowStack, run: str) -> None:
    headers = bearer(stack, "viewer")
    one = requests.get(transfer_url(stack, run, "mapped", "1"), headers=headers, timeout=30).json()
    assert one["ti"]["map_index"] == 1 and one["ti"]["state"] == "failed" and one["poll"] is False
    assert (one["map"]["count"], one["map"]["done_count"]) == (3, 2)
    assert one["rate_bps"] is None  # not running: no live rate
    zero = requests.get(transfer_url(stack, run, "mapped", "0"), headers=headers, timeout=30).json()
    assert zero["found"] is False and zero["ti"]["map_index"] == 0
    missing = requests.get(transfer_url(stack, run, "nope"), headers=headers, timeout=30)
    assert missing.status_code == 404


def test_transfers_list_shows_running_and_failed_with_links(stack: AirflowStack, run: str) -> None:
    resp = requests.get(f"{stack.url}{URL_PREFIX}/api/transfers", headers=bearer(stack, "viewer"), timeout=30)
    assert resp.status_code == 200, resp.text
    rows = {(t["ti"]["task_id"], t["ti"]["map_index"]): t for t in resp.json()["transfers"]}
    assert set(rows) >= {("hold", -1), ("mapped", 1)}
    hold = rows[("hold", -1)]
    assert (
        hold["ti"]["state"] == "running" and hold["percent"] is not None and hold["rate_bps"] == 123.0 * MiB
    )
    assert hold["tab"] == f"dags/{DAG_ID}/runs/{quote(run, safe='')}/tasks/hold/plugin/transfer"
    assert rows[("mapped", 1)]["tab"].endswith("/tasks/mapped/mapped/1/plugin/transfer")
    assert rows[("mapped", 1)]["ti"]["state"] == "failed"
    assert "SASSIGNATURE123" not in resp.text and SECRET_SESSION not in resp.text
