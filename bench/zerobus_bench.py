"""Zerobus ingest: our engine (what ZerobusIngestOperator runs) vs the official SDK, into the emulator.

One emulator (a real Delta table per run), one JSON Lines file of N records of about 200 bytes, and each
measured client in its own process (peak RSS per client):

- ``sdk``: the official SDK as a user would drive it from a file: lines read in batches of 1000 and
  handed to ``ingest_records_offset`` as JSON text, one ``flush`` at the end;
- ``ours``: the engine's ``Ingester`` over ``ZerobusClient.open_sink`` and a ``JsonLinesReader`` (what
  the operator runs: records parsed, batched, flushed every 10 batches with a checkpoint after each flush);
- ``delta``: the ceiling of the emulator's storage side: the same rows written straight to a Delta table
  with ``deltalake.write_deltalake`` in 50,000-row commits (the emulator's commit size), no gRPC at all.

Runs are interleaved; rows landed are counted in each table (must equal N). Prints records/s, MB/s, ratio
to the SDK and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA = "id BIGINT NOT NULL, ts BIGINT, user STRING, event STRING, body STRING"
EVENTS = ["click", "view", "purchase", "signup", "logout"]


def make_records(path: Path, n: int) -> int:
    rng = random.Random(7)
    with open(path, "w") as f:
        for i in range(n):
            body = f"{rng.getrandbits(128):032x}" * 4
            rec = {
                "id": i,
                "ts": 1_764_000_000_000_000 + i,
                "user": f"user-{rng.randrange(100_000):05d}",
                "event": EVENTS[i % len(EVENTS)],
                "body": body,
            }
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return path.stat().st_size


# ---------------------------------------------------------------------------- workers (child processes)
def worker_sdk(spec: dict[str, Any]) -> None:
    import zerobus

    sdk = zerobus.ZerobusSdk(spec["endpoint"], spec["uc_url"])
    stream = sdk.create_stream(
        client_id=spec["client_id"],
        client_secret=spec["client_secret"],
        table_properties=zerobus.TableProperties(spec["table"]),
    )
    batch: list[str] = []
    with open(spec["file"]) as f:
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) == 1000:
                stream.ingest_records_offset(batch)
                batch = []
    if batch:
        stream.ingest_records_offset(batch)
    stream.flush()
    stream.close()


def worker_ours(spec: dict[str, Any]) -> None:
    from airflow_databricks_transfer.clients.zerobus import ZerobusClient
    from airflow_databricks_transfer.engine.checkpoint import SourceIdentity
    from airflow_databricks_transfer.engine.ingest import Ingester, IngestOptions, JsonLinesReader

    client = ZerobusClient(
        spec["endpoint"], spec["uc_url"], client_id=spec["client_id"], client_secret=spec["client_secret"]
    )
    ingester = Ingester(
        lambda: client.open_sink(spec["table"]),
        # as the operator reads JSON Lines for a JSON stream without a dedupe key: each line's own text
        JsonLinesReader(spec["file"], as_text=True),
        IngestOptions(
            batch_records=1000, flush_every_batches=int(os.environ.get("BENCH_FLUSH_EVERY", "100"))
        ),
        table=spec["table"],
        source=SourceIdentity.of_file(spec["file"]),
    )
    result = ingester.run()
    assert result.records == spec["records"], result


def worker_delta(spec: dict[str, Any]) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    rows: list[dict[str, Any]] = []
    with open(spec["file"]) as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == 50_000:
                write_deltalake(spec["delta_path"], pa.Table.from_pylist(rows), mode="append")
                rows = []
    if rows:
        write_deltalake(spec["delta_path"], pa.Table.from_pylist(rows), mode="append")


WORKERS = {"sdk": worker_sdk, "ours": worker_ours, "delta": worker_delta}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    started = time.perf_counter()
    WORKERS[spec["variant"]](spec)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


# ---------------------------------------------------------------------------- parent
def count_rows(path: Path) -> int:
    from deltalake import DeltaTable

    return int(DeltaTable(str(path)).to_pyarrow_dataset().count_rows())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="50,000 records, 1 run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.quick:
        args.records, args.runs = 50_000, 1

    from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator

    work = Path(
        tempfile.mkdtemp(prefix="zerobus-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    src = work / "records.jsonl"
    size = make_records(src, args.records)
    print(
        f"{args.records} records, {size / args.records:.0f} B each on average "
        f"({size / 1e6:.0f} MB of JSON Lines)"
    )
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in WORKERS}
    with ZerobusEmulator(work / "warehouse") as zb:
        for run in range(args.runs):
            for variant in WORKERS:
                table = f"main.bench.{variant}_{run}"
                spec: dict[str, Any] = {
                    "variant": variant,
                    "file": str(src),
                    "records": args.records,
                    "table": table,
                    "endpoint": zb.endpoint,
                    "uc_url": zb.uc_url,
                    "client_id": zb.client_id,
                    "client_secret": zb.client_secret,
                    "delta_path": str(work / "direct" / f"{variant}_{run}"),
                }
                if variant != "delta":
                    zb.create_table(table, SCHEMA)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                )
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    return 1
                sample = json.loads(proc.stdout.strip().splitlines()[-1])
                landed = count_rows(Path(spec["delta_path"]) if variant == "delta" else zb.table_path(table))
                sample["rows_ok"] = landed == args.records
                samples[variant].append(sample)
                rate = args.records / sample["seconds"]
                print(
                    f"  run {run + 1}/{args.runs} {variant:5s} {rate:10,.0f} records/s "
                    f"{size / sample['seconds'] / 1e6:7.1f} MB/s  peak {sample['peak_rss_mib']:6.0f} MiB"
                    f"  rows {'ok' if sample['rows_ok'] else f'WRONG ({landed})'}"
                )
    med = {v: statistics.median(args.records / s["seconds"] for s in ss) for v, ss in samples.items()}
    print("\nvariant   records/s (median, min-max)          MB/s   ratio   peak RSS")
    for v, ss in samples.items():
        rates = [args.records / s["seconds"] for s in ss]
        print(
            f"{v:8s} {med[v]:10,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
            f"{med[v] * size / args.records / 1e6:12.1f} {med[v] / med['sdk']:6.2f}x"
            f" {max(s['peak_rss_mib'] for s in ss):7.0f} MiB"
        )
    ratio = med["ours"] / med["sdk"]
    print(f"\n{'PASS' if ratio >= 0.9 else 'MISS'}  ours >= 0.9x the SDK: {ratio:.2f}x")
    ok = all(s["rows_ok"] for ss in samples.values() for s in ss)
    print("rows: every table holds exactly the records sent" if ok else "rows: a table is WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
