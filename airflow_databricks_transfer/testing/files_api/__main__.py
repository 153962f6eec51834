"""``python -m airflow_databricks_transfer.testing.files_api``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from airflow_databricks_transfer.testing.files_api.server import FilesApiServer
from airflow_databricks_transfer.testing.files_api.settings import EmulatorSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_databricks_transfer.testing.files_api",
        description="Local Databricks Files API (Unity Catalog Volumes) emulator with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    p.add_argument("--root", required=True, type=Path, help="directory holding the emulated volumes")
    p.add_argument("--token", action="append", dest="tokens", help="accepted Bearer token (repeatable)")
    p.add_argument("--read-only-token", action="append", default=[], help="token that may only read")
    p.add_argument("--volume", action="append", default=[], help="create catalog.schema.volume at start")
    p.add_argument("--auto-create-volumes", action="store_true", help="accept paths in volumes never created")
    p.add_argument("--upload-protocol", choices=["multipart", "resumable"], default="multipart")
    p.add_argument("--cloud", choices=["AWS", "AZURE", "GCP"], default="AWS", help="style of storage errors")
    p.add_argument("--min-part-size", type=int, default=EmulatorSettings.min_part_size_bytes)
    p.add_argument("--session-ttl-s", type=float, default=EmulatorSettings.session_ttl_s)
    p.add_argument("--no-presigned", action="store_true", help="answer FILES_API_API_IS_NOT_ENABLED")
    p.add_argument("--data-plane-url", default=None, help="base URL to mint into presigned URLs")
    p.add_argument(
        "--discard-part-bodies",
        action="store_true",
        help="benchmark sink: drop multipart part bodies; completed files are sparse, of the right size",
    )
    p.add_argument(
        "--files-api-etag",
        action="store_true",
        help="the workspace's own file GET/HEAD send an ETag and honour If-Match (default: neither)",
    )
    p.add_argument(
        "--last-modified-bump",
        action="store_true",
        help="push every write into a later Last-Modified second (default: the real 1 s stamp)",
    )
    p.add_argument(
        "--clock-offset-s",
        type=int,
        default=0,
        help="server clock = real time + this many seconds (expiry checks, Last-Modified, Date)",
    )
    p.add_argument(
        "--lenient-expire-time",
        action="store_true",
        help="accept a missing, non-canonical or past expire_time (default: 400 INVALID_PARAMETER_VALUE)",
    )
    p.add_argument(
        "--list-order",
        choices=["arbitrary", "sorted"],
        default=EmulatorSettings.list_order,
        help="order of directory listings: seeded arbitrary (like the real, unspecified one) or sorted",
    )
    p.add_argument("--list-order-seed", type=int, default=EmulatorSettings.list_order_seed)
    p.add_argument(
        "--rate-limit-concurrent",
        type=int,
        default=EmulatorSettings.rate_limit_concurrent,
        help="API requests in flight before 429 REQUEST_LIMIT_EXCEEDED (0: no limit; default %(default)s)",
    )
    p.add_argument(
        "--rate-limit-per-s",
        type=int,
        default=EmulatorSettings.rate_limit_per_s,
        help="API requests started per second before 429 (0: no limit; default %(default)s)",
    )
    p.add_argument(
        "--workspace-put-without-length",
        action="store_true",
        help="store workspace PUTs sent chunked or without Content-Length (default: refuse with 411)",
    )
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = EmulatorSettings(
        tokens=frozenset(args.tokens or EmulatorSettings.tokens),
        read_only_tokens=frozenset(args.read_only_token),
        upload_protocol=args.upload_protocol,
        cloud=args.cloud,
        min_part_size_bytes=args.min_part_size,
        session_ttl_s=args.session_ttl_s,
        presigned_enabled=not args.no_presigned,
        auto_create_volumes=args.auto_create_volumes,
        data_plane_url=args.data_plane_url,
        discard_part_bodies=args.discard_part_bodies,
        files_api_etag=args.files_api_etag,
        last_modified_bump=args.last_modified_bump,
        clock_offset_s=args.clock_offset_s,
        expire_time_strict=not args.lenient_expire_time,
        list_order=args.list_order,
        list_order_seed=args.list_order_seed,
        rate_limit_concurrent=args.rate_limit_concurrent,
        rate_limit_per_s=args.rate_limit_per_s,
        workspace_put_requires_length=not args.workspace_put_without_length,
    )
    args.root.mkdir(parents=True, exist_ok=True)
    server = FilesApiServer(args.host, args.port, args.root, settings)
    if args.volume:
        server.seed({"volumes": args.volume})
    port = server.server_address[1]
    if args.port_file:
        args.port_file.write_text(str(port))

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"Databricks Files API emulator on {server.base_url} (root {server.store.root}, "
        f"{len(settings.tokens)} token(s); control plane at {server.base_url}/_emulator/state)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.close_connections()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
