"""Main job: run the example DAGs against the local Files API emulator and Azurite, offline, and show a
retry resume.

1. Starts the emulator as its own process (with the volume ``main.default.landing``) and, through its
   control plane, plans an outage: from the upload's part ``N + 1`` on, every part PUT is answered
   503 (Retry-After: 1 s), so the upload's first try spends its in-try retries and dies mid-way with
   RetryBudgetExceeded, keeping its checkpoint. The outage ends once Airflow has marked that try
   ``up_for_retry`` (the script watches the metadata DB). A download chunk is also cut mid-body once.
   Starts Azurite (the Azure Storage emulator, from ``node_modules``; ``scripts/bootstrap.sh`` installs
   it) on a free port with a throwaway data folder.
2. Points ``databricks_default`` at the emulator and ``wasb_default`` at Azurite with ``AIRFLOW_CONN_*``
   variables, in a throwaway AIRFLOW_HOME, and runs ``airflow dags test`` for
   ``databricks_volume_roundtrip`` (upload, download, verify; ``dags test`` honours ``retries`` and
   ``retry_delay``), ``databricks_volume_sensor`` and ``azure_blob_volume_roundtrip`` (local -> Blob ->
   Volume -> Blob -> local, SHA-256 compared).
   Starts the Zerobus emulator (in this process, writing real Delta tables) with the table
   ``main.default.events`` and runs ``zerobus_ingest`` (generate JSON Lines, stream them in through the
   official Zerobus SDK). One ingest request is committed and then its connection reset before the ack, so
   the SDK resends it: the table is read back with ``deltalake`` and the duplicates it holds are counted, and
   dropped exactly by the ``dedupe_key`` column.
   Runs ``databricks_volume_sync`` twice over the same generated tree (2,000 small files by default): the
   first run sends every file, the second sends none and reads none (the hash cache and the manifest in
   the Volume answer for every file).
3. Prints what each try did. Every number comes from the emulator's request log (which part PUTs it
   accepted, refused, or got again) or from Airflow's metadata DB (task tries, the XCom results); none
   is computed from what the demo expects. ``--summary-json`` writes them for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_databricks_transfer.testing.azurite import Azurite, AzuriteError

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ROUNDTRIP = "databricks_volume_roundtrip"
SENSOR = "databricks_volume_sensor"
AZURE = "azure_blob_volume_roundtrip"
SYNC = "databricks_volume_sync"
SYNC_TARGET = "/Volumes/main/default/landing/sync"
ZEROBUS = "zerobus_ingest"
ZEROBUS_TABLE = "main.default.events"
ZEROBUS_SCHEMA = "id BIGINT NOT NULL, user STRING, kind STRING, amount DOUBLE, dedupe_key STRING"
AZURE_STEPS = (
    ("upload_blob", "local -> Blob"),
    ("blob_to_volume", "Blob -> Volume"),
    ("volume_to_blob", "Volume -> Blob"),
    ("download", "Blob -> local"),
)
MiB = 1024 * 1024
RUN_TIMEOUT_S = 900


def control(url: str, method: str, name: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/_emulator/{name}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read Airflow's metadata DB read-only, so the running ``dags test`` is never disturbed."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def task_state(db: Path, dag_id: str, task_id: str) -> tuple[int, str] | None:
    """(try_number, state) of a task instance, or None while there is none to read."""
    try:
        rows = query(
            db,
            "SELECT try_number, state FROM task_instance WHERE dag_id = ? AND task_id = ?",
            dag_id,
            task_id,
        )
    except sqlite3.Error:  # not created yet, or busy for a moment
        return None
    return (int(rows[0][0]), str(rows[0][1])) if rows else None


class Outage:
    """Part PUTs fail from the ``after_parts + 1``-th on, until ``end`` (called once the try gave up)."""

    def __init__(self, url: str, after_parts: int) -> None:
        self.url = url
        rule = {
            "route": "presigned.part",
            "nth": after_parts + 1,
            "times": None,
            "status": 503,
            "retry_after_s": 1,
            "error_code": "ServiceUnavailable",
            "message": "demo outage",
        }
        self.rule_id: str = control(url, "POST", "faults", rule)["ids"][0]
        self.refused: int | None = None
        self.last_seq_of_try1: int | None = None
        self.seen: tuple[int, str] | None = None  # the upload's (try_number, state) when the outage ended

    @property
    def active(self) -> bool:
        return self.refused is None

    def end(self, seen: tuple[int, str]) -> None:
        self.seen = seen
        rules = control(self.url, "GET", "faults")["faults"]
        self.refused = next(r["fired"] for r in rules if r["id"] == self.rule_id)
        control(self.url, "DELETE", f"faults/{self.rule_id}")
        # every request of the failed try was answered before Airflow could mark it up_for_retry
        self.last_seq_of_try1 = max((r["seq"] for r in requests_log(self.url)), default=0)


def requests_log(url: str) -> list[dict[str, Any]]:
    return list(control(url, "GET", "requests")["requests"])


def run_dag(
    env: dict[str, str], dag_id: str, conf: dict[str, Any], log: Path, outage: Outage | None = None
) -> tuple[bool, str, float]:
    """``airflow dags test``; meanwhile end ``outage`` as soon as the upload's try is up for retry."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                seen = task_state(db, dag_id, "upload") if outage is not None and outage.active else None
                if outage is not None and seen is not None and seen[1] == "up_for_retry":
                    outage.end(seen)
                if time.monotonic() - started > RUN_TIMEOUT_S:
                    break
                time.sleep(0.1)
        finally:  # a hung run, or Ctrl-C here: the run has its own session, so stop it whole
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                with open(log, "a") as tail:
                    tail.write(f"\n(killed after {time.monotonic() - started:.0f} s)\n")
    text = log.read_text()
    ok = proc.returncode == 0 and "state=success" in text
    return ok, text, time.monotonic() - started


def tries(db: Path, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    """Every try of a task instance, from Airflow's history table plus the current row."""
    cols = "try_number, state, start_date, end_date"
    where = "WHERE dag_id = ? AND task_id = ?"
    rows = query(db, f"SELECT {cols} FROM task_instance_history {where} ORDER BY try_number", dag_id, task_id)
    rows += query(db, f"SELECT {cols} FROM task_instance {where}", dag_id, task_id)
    return [{"try_number": r[0], "state": r[1], "start": r[2], "end": r[3]} for r in rows]


SYNC_XCOM_SQL = (
    "SELECT x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id"
    " WHERE x.dag_id = ? AND x.task_id = ? AND x.key = 'return_value' ORDER BY r.id"
)


def xcom(db: Path, dag_id: str, task_id: str) -> Any:
    rows = query(
        db,
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'",
        dag_id,
        task_id,
    )
    return json.loads(rows[0][0]) if rows else None


def first_try_error(log_text: str, task_id: str) -> str | None:
    """The exception that ended a task's first try, as its traceback's last line in the ``dags test`` log."""
    block = re.search(
        rf"\[DAG TEST\] starting task_id={task_id} .*?\[DAG TEST\] end task task_id={task_id} ",
        log_text,
        re.S,
    )
    raised = re.findall(r"^(?:[\w.]+\.)?(\w+): (.+)$", block.group(0) if block else "", re.M)
    errors = [
        f"{name}: {msg.strip()}" for name, msg in raised if name.endswith(("Error", "Exceeded", "Exception"))
    ]
    return errors[-1] if errors else None


def part_puts(log: list[dict[str, Any]], path: str, after: int, upto: int | None) -> dict[str, Any]:
    """Part PUTs to ``path`` with ``after < seq <= upto``: which parts the emulator accepted, bytes in."""
    sel = [
        r
        for r in log
        if r["route"] == "presigned.part" and r["path"] == path and r["seq"] > after
        if upto is None or r["seq"] <= upto
    ]
    ok = [r for r in sel if 200 <= r["status"] < 300]
    return {
        "requests": len(sel),
        "accepted_parts": sorted(r["part_number"] for r in ok),
        "accepted_bytes": sum(r["bytes_in"] for r in ok),
        "refused": len(sel) - len(ok),
        "bytes_in": sum(r["bytes_in"] for r in sel),
    }


def resume_story(url: str, db: Path, outage: Outage, log_text: str) -> dict[str, Any]:
    """What each upload try did, from Airflow's DB and the emulator's log; ``problems``: claims that fail."""
    result = xcom(db, ROUNDTRIP, "upload") or {}
    upload_tries = tries(db, ROUNDTRIP, "upload")
    log = requests_log(url)
    problems = []
    story: dict[str, Any] = {
        "tries": upload_tries,
        "try1_seen": outage.seen,
        "xcom": result,
        "outage_refused": outage.refused,
    }
    if outage.last_seq_of_try1 is None or not result:
        problems.append("the upload never came up for retry, or never finished")
        story["problems"] = problems
        return story
    path = result["destination"]
    try1 = part_puts(log, path, 0, outage.last_seq_of_try1)
    try2 = part_puts(log, path, outage.last_seq_of_try1, None)
    delivered = set(try1["accepted_parts"])
    again = [r for r in log if r["route"] == "presigned.part" and r["path"] == path]
    again = [r for r in again if r["seq"] > outage.last_seq_of_try1 and r["part_number"] in delivered]
    error = first_try_error(log_text, "upload")
    story.update(
        {
            "try1": try1,
            "try2": try2,
            "try1_error": error,
            "resent_parts": sorted({r["part_number"] for r in again}),
            "resent_bytes": sum(r["bytes_in"] for r in again),
        }
    )
    final = [(t["try_number"], t["state"]) for t in upload_tries][-1:]
    if outage.seen != (1, "up_for_retry") or final != [(2, "success")]:
        problems.append(f"expected try 1 up_for_retry, then try 2 success; saw {outage.seen}, then {final}")
    if not delivered:
        problems.append("try 1 got no part onto the server before it died")
    if result.get("parts_resumed") != len(delivered):
        problems.append(f"XCom parts_resumed={result.get('parts_resumed')}, emulator saw {len(delivered)}")
    if result.get("bytes_resumed") != try1["accepted_bytes"]:
        problems.append(
            f"XCom bytes_resumed={result.get('bytes_resumed')}, emulator {try1['accepted_bytes']}"
        )
    if again:
        problems.append(f"try 2 sent parts {story['resent_parts']} again")
    accepted = try1["accepted_parts"] + try2["accepted_parts"]
    if sorted(accepted) != list(range(1, result["parts"] + 1)):
        problems.append(
            f"the emulator accepted parts {sorted(accepted)}, not each of 1..{result['parts']} once"
        )
    if try1["accepted_bytes"] + try2["accepted_bytes"] != result["bytes"]:
        problems.append("the bytes the emulator accepted across both tries are not the file's size")
    story["problems"] = problems
    return story


def zerobus_story(emu: Any, db: Path, events: int) -> dict[str, Any]:
    """What reached the Delta table, read back with deltalake; ``problems``: claims that fail."""
    result = xcom(db, ZEROBUS, "ingest") or {}
    rows = emu.read_table(ZEROBUS_TABLE)
    counts: dict[int, int] = {}
    for row in rows:
        counts[row["id"]] = counts.get(row["id"], 0) + 1
    keys = {row["dedupe_key"] for row in rows}
    duplicates = sum(c - 1 for c in counts.values())
    story = {
        "xcom": result,
        "rows": len(rows),
        "distinct_ids": len(counts),
        "duplicates": duplicates,
        "distinct_dedupe_keys": len(keys),
        "sample": sorted(rows, key=lambda r: r["id"])[:3],
        "streams": len(emu.streams(ZEROBUS_TABLE)),
        "connections_dropped": emu.stats().get("connections_dropped", 0),
    }
    problems = []
    if sorted(counts) != list(range(events)):
        problems.append(f"the table lacks records: {len(counts)} distinct ids of {events}")
    if len(keys) != events:
        problems.append(f"{len(keys)} distinct dedupe keys for {events} records")
    window = result.get("duplicates_window_records")
    if isinstance(window, int) and duplicates > window:
        problems.append(f"{duplicates} duplicates, more than the window of {window} records")
    story["problems"] = problems
    return story


TABS_SQL = (
    "SELECT DISTINCT x.dag_id, x.run_id, x.task_id, x.map_index FROM xcom x"
    " WHERE x.key = 'checkpoint' ORDER BY x.dag_run_id, x.task_id, x.map_index"
)


def transfer_tabs(db: Path) -> list[str]:
    """Where each transfer's Transfer tab is, on an Airflow api-server over this metadata database.

    The demo runs ``airflow dags test`` and starts no api-server; on a user's Airflow the same path
    follows the UI's base URL (``[api] base_url``). A task of this package is one with a ``checkpoint``
    XCom (every transfer operator pushes its progress or final summary there).
    """
    from airflow_databricks_transfer.plugins.transfer_view import tab_path

    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
    try:
        rows = query(db, TABS_SQL)
    except sqlite3.Error:
        return []
    return [f"{base}/{tab_path(str(d), str(r), str(t), int(m))}" for d, r, t, m in rows]


def seconds(tries: dict[int, dict[str, Any]], a: int, a_key: str, b: int, c_key: str) -> str:
    """Seconds from one try's start or end to another's, as Airflow recorded them."""
    try:
        delta = datetime.fromisoformat(tries[b][c_key]) - datetime.fromisoformat(tries[a][a_key])
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{delta.total_seconds():.1f} s"


def mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def print_summary(
    story: dict[str, Any],
    results: list[tuple[str, bool, float]],
    roundtrip: dict[str, Any] | None,
    download: dict[str, Any] | None,
    cuts: int,
    sensor_found: str | None,
    azure: dict[str, Any] | None,
    stats: dict[str, Any],
    zerobus: dict[str, Any] | None = None,
) -> None:
    print()
    print("DAG                            result   seconds")
    for dag_id, ok, secs in results:
        print(f"{dag_id:30} {'success' if ok else 'FAILED':8} {secs:7.1f}")
    print()
    if "try1" in story:
        one, two, up = story["try1"], story["try2"], story["xcom"]
        t = {x["try_number"]: x for x in story["tries"]}
        seen = story["try1_seen"][1] if story["try1_seen"] else "?"
        took = seconds(t, 1, "start", 1, "end")
        print(f"upload try 1  {seen} after {took}: {story['try1_error'] or 'no exception in the log'}")
        print(
            f"              the emulator had accepted {len(one['accepted_parts'])} of {up['parts']} parts "
            f"({mib(one['accepted_bytes'])}) when it died, and refused {one['refused']} part PUTs "
            "(503, Retry-After: 1 s)"
        )
        state2 = t[2]["state"] if 2 in t else "?"
        took, gap = seconds(t, 2, "start", 2, "end"), seconds(t, 1, "end", 2, "start")
        print(
            f"upload try 2  {state2} after {took}, started {gap} after try 1 ended: XCom "
            f"parts_resumed={up['parts_resumed']} bytes_resumed={up['bytes_resumed']} "
            f"({mib(up['bytes_resumed'])}), bytes_sent={up['bytes_sent']}"
        )
        got = f"{len(two['accepted_parts'])} parts ({mib(two['accepted_bytes'])})"
        print(
            f"              the emulator got {got} from try 2, and {len(story['resent_parts'])} of the "
            f"{len(one['accepted_parts'])} parts try 1 delivered ({story['resent_bytes']} bytes again)"
        )
    for problem in story["problems"]:
        print(f"CHECK FAILED  {problem}")
    if roundtrip:
        down = f"down at {download['mib_per_s']} MiB/s" if download else "down"
        print(
            f"roundtrip     {mib(roundtrip['bytes'])} up in {roundtrip['upload_parts']} parts, {down} "
            f"({cuts} chunk cut mid-body by the emulator and retried within the try)"
        )
        print(f"              SHA-256 {roundtrip['sha256']} identical after the round trip")
    if sensor_found:
        print(
            f"sensor        deferred until {sensor_found} CSV file(s) landed and stopped growing; fetched one"
        )
    if azure:
        steps = ", ".join(f"{name} {azure['mib_per_s'][step]} MiB/s" for step, name in AZURE_STEPS)
        print(f"azure         {mib(azure['bytes'])}: {steps}")
        match = "identical" if azure["sha256_match"] else "DIFFERENT"
        trip = "local -> Blob -> Volume -> Blob -> local"
        print(f"              SHA-256 {azure['sha256']} {match} after {trip}")
    if zerobus:
        up = zerobus["xcom"]
        print(
            f"zerobus       {up.get('records', '?')} records in {up.get('batches', '?')} batches "
            f"({up.get('records_per_s', '?')} records/s) into {ZEROBUS_TABLE}; read back with deltalake: "
            f"{zerobus['rows']} rows, {zerobus['distinct_ids']} distinct ids, "
            f"{zerobus['duplicates']} duplicates"
        )
        print(
            f"              (a connection reset after a commit made the SDK resend; at most "
            f"{up.get('duplicates_window_records', '?')} records can come twice) -> "
            f"{zerobus['distinct_dedupe_keys']} rows after de-duplication by dedupe_key"
        )
        for row in zerobus["sample"]:
            print(f"              {row}")
        for problem in zerobus["problems"]:
            print(f"CHECK FAILED  {problem}")
    received = sum(stats["bytes_in_by_path"].values())
    sent = sum(stats["bytes_out_by_path"].values())
    print(f"emulator      {stats['requests']} requests; {mib(received)} received, {mib(sent)} sent")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="size of the file the roundtrip DAG moves")
    ap.add_argument(
        "--azure-size-mib",
        type=int,
        default=128,
        help="size of the file the Azure DAG moves four times (Azurite takes 35-70 MiB/s on uploads)",
    )
    ap.add_argument(
        "--outage-after-parts",
        type=int,
        default=None,
        help="part PUTs the emulator accepts before the outage (default: half of the 16 MiB parts)",
    )
    ap.add_argument("--zerobus-events", type=int, default=20_000, help="JSON Lines the Zerobus DAG ingests")
    ap.add_argument("--sync-files", type=int, default=2000, help="files in the tree the sync DAG syncs twice")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, emulator root)")
    ap.add_argument("--summary-json", type=Path, help="also write the numbers shown to this file")
    args = ap.parse_args()
    # ``kill`` as well as Ctrl-C unwinds through the clean-ups: the DAG run, the emulator, the work folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.size_mib < 32:
        ap.error("--size-mib must be at least 32, so the upload has parts to resume")
    after_parts = args.outage_after_parts or max(1, args.size_mib // 16 // 2)

    work = Path(tempfile.mkdtemp(prefix="adt-demo-"))
    azurite = Azurite()  # its own temp data folder, removed when it stops
    try:
        azurite.start()
    except AzuriteError as err:
        print(f"Azurite did not start: {err}")
        subprocess.run(["rm", "-rf", str(work)], check=False)
        return 1
    port_file = work / "emulator.port"
    token = "dapi-demo-" + os.urandom(6).hex()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_databricks_transfer.testing.files_api",
            "--root",
            str(work / "volumes"),
            "--token",
            token,
            "--volume",
            "main.default.landing",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "emulator.log", "w"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if emulator.poll() is not None or time.monotonic() > deadline:
                print("the emulator did not start; see", work / "emulator.log")
                return 1
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "ADT_DEMO_DIR": str(work / "local"),
            # Azurite's published development key: it only opens this local emulator
            "AIRFLOW_CONN_WASB_DEFAULT": json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string()}}
            ),
            "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(
                {
                    "conn_type": "databricks",
                    "host": url,
                    "password": token,
                    "extra": {"retry_timeout_seconds": 30},
                }
            ),
        }
        db = work / "airflow" / "airflow.db"
        print(f"Files API emulator on {url}; Azurite on {azurite.blob_endpoint}")
        print(f"Airflow home {work / 'airflow'}")
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        outage = Outage(url, after_parts)
        cut_id = control(
            url, "POST", "faults", {"route": "presigned.download", "nth": 2, "cut_after_bytes": 10**6}
        )
        print(
            f"Planned outage: after {after_parts} part PUT(s) the emulator answers every part PUT with 503 "
            "until Airflow has marked the upload's try up_for_retry; one download chunk is cut mid-body"
        )
        results = []
        ok1, text1, s1 = run_dag(env, ROUNDTRIP, {"size_mib": args.size_mib}, work / "roundtrip.log", outage)
        results.append((ROUNDTRIP, ok1, s1))
        story = resume_story(url, db, outage, text1)
        log = requests_log(url)
        cuts = sum(1 for r in log if r["fault"] == cut_id["ids"][0] and r["dropped"])
        ok2, text2, s2 = run_dag(env, SENSOR, {"delay_s": 2}, work / "sensor.log")
        results.append((SENSOR, ok2, s2))
        found = re.search(r"Found (\d+) file\(s\)", text2)
        if outage.active:  # the roundtrip never came up for retry: the Azure run must not meet the outage
            control(url, "DELETE", f"faults/{outage.rule_id}")
        azure_conf = {
            "size_mib": args.azure_size_mib,
            "volume_dir": "/Volumes/main/default/landing/azure",
        }
        ok3, _, s3 = run_dag(env, AZURE, azure_conf, work / "azure.log")
        results.append((AZURE, ok3, s3))
        ok4, zerobus = run_zerobus(env, work, args.zerobus_events, results)
        ok5, sync = run_sync(env, work, db, args.sync_files, results)
        stats = control(url, "GET", "stats")
        roundtrip = xcom(db, ROUNDTRIP, "verify")
        download = xcom(db, ROUNDTRIP, "download")
        azure = xcom(db, AZURE, "verify")
        sensor_found = found.group(1) if found else None
        print_summary(story, results, roundtrip, download, cuts, sensor_found, azure, stats, zerobus)
        tabs = transfer_tabs(db)
        print()
        print("Transfer tabs (live part map, rate, ETA, tries; start `airflow api-server` with this")
        print(f"AIRFLOW_HOME={work / 'airflow'} and --keep to open them):")
        for tab in tabs:
            print(f"  {tab}")
        if args.summary_json:
            summary = {
                "dags": {d: {"ok": ok, "seconds": round(s, 1)} for d, ok, s in results},
                "upload": story,
                "roundtrip": roundtrip,
                "download": download,
                "download_cuts": cuts,
                "azure": azure,
                "zerobus": zerobus,
                "sync": sync,
                "emulator": stats,
                "transfer_tabs": tabs,
            }
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        zerobus_problems = zerobus["problems"] if zerobus else ["the Zerobus emulator did not start"]
        if not (ok1 and ok2 and ok3 and ok4 and ok5) or story["problems"] or zerobus_problems:
            print(f"logs in {work}")
            args.keep = True
            return 1
        return 0
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        azurite.stop()  # before the work folder goes: SIGTERM lets it flush and exit
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def run_sync(
    env: dict[str, str], work: Path, db: Path, files: int, results: list[tuple[str, bool, float]]
) -> tuple[bool, dict[str, Any]]:
    """``databricks_volume_sync`` twice over the same generated tree: the second run sends nothing."""
    conf = {"local_dir": str(work / "sync-tree"), "volume_dir": SYNC_TARGET, "files": files}
    sync_env = {**env, "XDG_STATE_HOME": str(work / "state")}  # the workers' hash cache
    runs = []
    for n in (1, 2):
        ok, _, secs = run_dag(sync_env, SYNC, conf, work / f"sync-{n}.log")
        results.append((f"{SYNC} (run {n})", ok, secs))
        runs.append(ok)
    values = [json.loads(r[0]) for r in query(db, SYNC_XCOM_SQL, SYNC, "sync")]
    first, second = [*values, None, None][:2]
    problems = []
    if not (first and second):
        problems.append("a sync run left no result")
    elif second["uploaded"] or second["files_hashed"]:
        problems.append(f"the second sync sent {second['uploaded']} and read {second['files_hashed']} files")
    if first and second:
        print(
            f"sync          run 1 sent {first['uploaded']} files ({mib(first['bytes_uploaded'])}) in "
            f"{first['seconds']:.1f} s ({first['files_per_s']:.0f} files/s); run 2 sent "
            f"{second['uploaded']}, read {second['files_hashed']} files ({second['hash_cache_hits']} hashes "
            f"from the cache), {second['skipped']} unchanged, in {second['seconds']:.2f} s"
        )
    for p in problems:
        print(f"CHECK FAILED: {p}")
    return all(runs) and not problems, {"first": first, "second": second, "problems": problems}


def run_zerobus(
    env: dict[str, str], work: Path, events: int, results: list[tuple[str, bool, float]]
) -> tuple[bool, dict[str, Any] | None]:
    """The Zerobus emulator in this process, the ``zerobus_ingest`` DAG against it, the table read back."""
    from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator  # deltalake loads here

    with ZerobusEmulator(work / "warehouse", tables={ZEROBUS_TABLE: ZEROBUS_SCHEMA}) as emu:
        conn = {
            "conn_type": "databricks",
            "host": emu.uc_url,
            "login": emu.client_id,
            "password": emu.client_secret,  # the emulator's published demo principal
            "extra": {"zerobus_endpoint": emu.endpoint},
        }
        print(f"Zerobus emulator on {emu.endpoint} (OAuth at {emu.uc_url}), warehouse {emu.warehouse}")
        # the 3rd ingest request is committed, then its connection reset before the ack: the SDK resends it
        emu.add_fault(route="zerobus.ingest", path=ZEROBUS_TABLE, nth=3, drop=True, phase="after")
        conf = {"events": events, "table": ZEROBUS_TABLE, "conn_id": "zerobus_emulator"}
        zenv = {**env, "AIRFLOW_CONN_ZEROBUS_EMULATOR": json.dumps(conn)}
        ok, _, secs = run_dag(zenv, ZEROBUS, conf, work / "zerobus.log")
        results.append((ZEROBUS, ok, secs))
        db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
        return ok, zerobus_story(emu, db, events)


if __name__ == "__main__":
    sys.exit(main())
