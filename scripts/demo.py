"""Main job: run the example DAGs against the local Files API emulator, offline, and summarise them.

1. Starts the emulator as its own process (with the volume ``main.default.landing``) and injects a few
   faults through its control plane: a throttled part (503 + Retry-After) and a download cut mid-body.
2. Points ``databricks_default`` at it with an ``AIRFLOW_CONN_*`` variable, in a throwaway AIRFLOW_HOME.
3. Runs ``airflow dags test`` for ``databricks_volume_roundtrip`` (upload, download, verify) and
   ``databricks_volume_sensor`` (deferrable sensor + producer), then prints what moved and how fast.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def control(url: str, method: str, name: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/_emulator/{name}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def run_dag(env: dict[str, str], dag_id: str, conf: dict[str, Any], log: Path) -> tuple[bool, str, float]:
    started = time.monotonic()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(
                [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=900,
            )
        except subprocess.TimeoutExpired:
            return False, log.read_text() + "\n(timed out after 900 s)", time.monotonic() - started
    text = log.read_text()
    ok = proc.returncode == 0 and "state=success" in text
    return ok, text, time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="size of the file the roundtrip DAG moves")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, emulator root)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adt-demo-"))
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
        control(
            url,
            "POST",
            "faults",
            {
                "faults": [
                    {"route": "presigned.part", "part_number": 2, "status": 503, "retry_after_s": 1},
                    {"route": "presigned.download", "nth": 3, "cut_after_bytes": 1_000_000},
                ]
            },
        )
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "ADT_DEMO_DIR": str(work / "local"),
            "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(
                {
                    "conn_type": "databricks",
                    "host": url,
                    "password": token,
                    "extra": {"retry_timeout_seconds": 30},
                }
            ),
        }
        print(f"Files API emulator on {url}; Airflow home {work / 'airflow'}")
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = []
        ok1, text1, s1 = run_dag(
            env, "databricks_volume_roundtrip", {"size_mib": args.size_mib}, work / "roundtrip.log"
        )
        summary = re.search(r"ROUNDTRIP SUMMARY (\{.*?\})", text1)
        results.append(("databricks_volume_roundtrip", ok1, s1))
        ok2, text2, s2 = run_dag(env, "databricks_volume_sensor", {"delay_s": 2}, work / "sensor.log")
        found = re.search(r"Found (\d+) file\(s\)", text2)
        results.append(("databricks_volume_sensor", ok2, s2))
        stats = control(url, "GET", "stats")
        retries = len(re.findall(r": retry \d+ in", text1))

        print()
        print("DAG                            result   seconds")
        for dag_id, ok, secs in results:
            print(f"{dag_id:30} {'success' if ok else 'FAILED':8} {secs:7.1f}")
        print()
        if summary:
            s = ast.literal_eval(summary.group(1))
            print(
                f"roundtrip   {s['bytes'] / 2**20:.0f} MiB up at {s['upload_mib_s']} MiB/s in "
                f"{s['upload_parts']} parts ({s['upload_parts_resumed']} resumed), down at "
                f"{s['download_mib_s']} MiB/s ({s['download_chunks_resumed']} chunks resumed)"
            )
            print(f"            SHA-256 {s['sha256']} identical after the round trip")
        print(
            f"faults      {retries} transient failure(s) injected by the emulator were retried "
            "(a throttled part, a download cut mid-body)"
        )
        if found:
            n = found.group(1)
            print(f"sensor      deferred until {n} CSV file(s) landed and stopped growing, then fetched one")
        received = sum(stats["bytes_in_by_path"].values()) / 2**20
        sent = sum(stats["bytes_out_by_path"].values()) / 2**20
        print(f"emulator    {stats['requests']} requests; {received:.0f} MiB received, {sent:.0f} MiB sent")
        if not (ok1 and ok2):
            print(f"logs in {work}")
            return 1
        return 0
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
