"""``python -m airflow_databricks_transfer.testing.zerobus``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from airflow_databricks_transfer.testing.zerobus.server import ZerobusServer
from airflow_databricks_transfer.testing.zerobus.settings import ZerobusSettings


def build_parser() -> argparse.ArgumentParser:
    d = ZerobusSettings()
    p = argparse.ArgumentParser(
        prog="python -m airflow_databricks_transfer.testing.zerobus",
        description="Local Databricks Zerobus Ingest emulator writing Delta tables, with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default 0: any free port)")
    p.add_argument("--http-port", type=int, default=0, help="OAuth token + control plane port (default any)")
    p.add_argument("--warehouse", required=True, type=Path, help="directory holding the Delta tables")
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="CATALOG.SCHEMA.TABLE=SPEC",
        help="create a table at start (repeatable): main.default.events='id BIGINT NOT NULL, body STRING'",
    )
    p.add_argument("--token", action="append", dest="tokens", help="accepted Bearer token (repeatable)")
    p.add_argument(
        "--oauth-client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="service principal accepted by /oidc/v1/token (repeatable)",
    )
    p.add_argument("--commit-max-records", type=int, default=d.commit_max_records)
    p.add_argument("--commit-max-bytes", type=int, default=d.commit_max_bytes)
    p.add_argument("--commit-interval-s", type=float, default=d.commit_interval_s)
    p.add_argument(
        "--no-table-header",
        action="store_true",
        help="accept streams without the x-databricks-zerobus-table-name header",
    )
    p.add_argument("--port-file", type=Path, help="write 'GRPC_PORT HTTP_PORT' here once listening")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    changes: dict[str, object] = {
        "commit_max_records": args.commit_max_records,
        "commit_max_bytes": args.commit_max_bytes,
        "commit_interval_s": args.commit_interval_s,
        "require_table_header": not args.no_table_header,
    }
    if args.tokens:
        changes["tokens"] = args.tokens
    if args.oauth_client:
        changes["oauth_clients"] = dict(c.split(":", 1) for c in args.oauth_client)
    server = ZerobusServer(
        args.warehouse,
        ZerobusSettings().updated(changes),
        host=args.host,
        port=args.port,
        http_port=args.http_port,
    )
    for item in args.table:
        name, sep, spec = item.partition("=")
        if not sep:
            raise SystemExit(f"--table {item!r}: expected CATALOG.SCHEMA.TABLE=SPEC")
        server.create_table(name.strip(), spec, exist_ok=True)
    server.start()
    if args.port_file:
        args.port_file.write_text(f"{server.port} {server.http_port}")
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    base = f"http://{args.host}:{server.http_port}"
    print(
        f"Zerobus emulator: endpoint http://{args.host}:{server.port}, workspace (OAuth) {base}, "
        f"control plane {base}/_emulator/state, warehouse {server.warehouse.root}, "
        f"tables {[t['name'] for t in server.tables()]}",
        flush=True,
    )
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
