"""``ingest``: a JSON Lines, CSV or Parquet file into a Unity Catalog table through Zerobus, resumable.

The same Ingester the Airflow operator runs (``hooks/_zerobus_ingest.py``): records go in batches, and
after each acknowledged flush the source position is checkpointed in the local state dir, so running the
same command again after an interruption continues after the last acknowledged record (what a killed run
had sent but not seen acknowledged is sent again: at-least-once). The checkpoint is removed on success.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_databricks_transfer.cli.args import positive_int, size
from airflow_databricks_transfer.cli.errors import CliError, UsageError
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.cli.runner import Runner, signals
from airflow_databricks_transfer.cli.state import IngestFileSink, local_key, state_dir
from airflow_databricks_transfer.clients.zerobus import StreamOptions, ZerobusClient
from airflow_databricks_transfer.engine.errors import CheckpointError
from airflow_databricks_transfer.engine.localstate import transfer_key
from airflow_databricks_transfer.hooks._zerobus_ingest import ZerobusIngests, file_reader, zerobus_connection

KIND = "zerobus.ingest"
ENV_ENDPOINT = "DATABRICKS_ZEROBUS_ENDPOINT"
CSV_TYPES = ("int", "float", "bool", "str", "json")


def _csv_types(pairs: list[str]) -> dict[str, str]:
    types: dict[str, str] = {}
    for pair in pairs:
        column, sep, kind = pair.partition("=")
        if not sep or not column or kind not in CSV_TYPES:
            raise UsageError(
                f"--csv-type takes COLUMN=TYPE with TYPE one of {', '.join(CSV_TYPES)}: {pair!r}"
            )
        types[column] = kind
    return types


def ingester(args: argparse.Namespace) -> ZerobusIngests:
    """A Zerobus hook (``--conn-id``) or the same ingests over the Databricks config's OAuth client."""
    endpoint = args.zerobus_endpoint or os.environ.get(ENV_ENDPOINT)
    if args.conn_id:
        from airflow_databricks_transfer.hooks.zerobus import ZerobusHook

        return ZerobusHook(args.conn_id, zerobus_endpoint=endpoint)
    from airflow_databricks_transfer.cli import auth

    config = auth.raw_config(args)
    try:
        spec = zerobus_connection(
            "the Databricks config",
            config.host,
            config.client_id,
            config.client_secret,
            {},
            endpoint=endpoint,
        )
    except ValueError as err:
        message = (
            str(err).replace("Login", "DATABRICKS_CLIENT_ID").replace("Password", "DATABRICKS_CLIENT_SECRET")
        )
        if "no Zerobus endpoint" in message:
            message = f"no Zerobus endpoint: pass --zerobus-endpoint or set {ENV_ENDPOINT}"
        raise CliError(message) from None
    return CliZerobus(
        ZerobusClient(spec.endpoint, spec.uc_url, client_id=spec.client_id, client_secret=spec.client_secret)
    )


class CliZerobus(Runner, ZerobusIngests):
    """The hook's ingests over a client built from the Databricks config."""

    def __init__(self, client: ZerobusClient) -> None:
        self._client = client
        self.stream_options = StreamOptions()

    @property
    def client(self) -> ZerobusClient:
        return self._client


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The Zerobus SDK's Rust core logs to file descriptor 1: send it to stderr while it runs, so stdout
    carries only the result (one JSON document with ``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def ingest(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    from airflow_databricks_transfer.engine.ingest import IngestOptions

    if not os.path.isfile(args.local):
        raise CliError(f"{args.local}: no such file")
    try:
        reader = file_reader(
            args.local,
            args.format,
            csv_delimiter=args.csv_delimiter,
            csv_types=_csv_types(args.csv_type),
            lines_as_text=args.dedupe_key is None,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    sink = IngestFileSink(state_dir(args) / transfer_key(KIND, local_key(args.local), args.table))
    checkpoint = None
    if args.no_resume:
        sink.clear()
    else:
        try:
            checkpoint = sink.load()
        except (CheckpointError, ValueError) as err:
            print(f"adt: ignoring the stored checkpoint ({err}); ingesting from the start", file=sys.stderr)
            sink.clear()
    options = IngestOptions(
        batch_records=args.batch_records,
        batch_bytes=args.batch_bytes,
        flush_every_batches=args.flush_every_batches,
        flush_interval_s=args.flush_interval,
        dedupe_key=args.dedupe_key,
        dead_letter_path=args.dead_letter,
        progress_interval_s=display.engine_interval_s,
    )
    # the SDK's Rust core reads RUST_LOG when it loads: its INFO lines only with --verbose
    os.environ.setdefault("RUST_LOG", "info" if args.verbose else "warn")
    runner = ingester(args)
    with signals(runner), display, _stdout_to_stderr():
        result = runner.ingest(
            reader,
            args.table,
            options=options,
            checkpoint=checkpoint,
            sink=sink,
            subscribers=[display.subscriber(args.table)],
        )
    sink.clear()
    return result.to_dict()


def render(result: dict[str, Any]) -> str:
    resumed = f", {result['records_resumed']} resumed" if result.get("records_resumed") else ""
    dead = f", {result['dead_lettered']} dead-lettered" if result.get("dead_lettered") else ""
    return (
        f"{result['source']} -> {result['table']}: {result['records']} records in {result['seconds']:.1f} s "
        f"({result['records_per_s']:.0f} records/s{resumed}{dead})"
    )


def add_parser(sub: Any, common: argparse.ArgumentParser, db: argparse.ArgumentParser) -> None:
    from airflow_databricks_transfer.engine.planning import MiB

    state = argparse.ArgumentParser(add_help=False)
    g = state.add_argument_group("state")
    g.add_argument("--state-dir", help="where the checkpoint lives (as for upload)")
    g.add_argument("--no-resume", action="store_true", help="discard a stored checkpoint; start from the top")
    p = sub.add_parser(
        "ingest",
        parents=[common, db, state],
        help="stream a JSONL/CSV/Parquet file into a table through Zerobus (resumable)",
        description="Ingest LOCAL into TABLE (catalog.schema.table) through Zerobus with OAuth M2M: the "
        "Databricks config's client id and secret (DATABRICKS_CLIENT_ID/SECRET or a profile), or --conn-id.",
    )
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("--table", required=True, help="catalog.schema.table")
    p.add_argument(
        "--zerobus-endpoint", help=f"https://<workspace-id>.zerobus.<region>... (or ${ENV_ENDPOINT})"
    )
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: by the file's extension")
    p.add_argument("--csv-delimiter")
    p.add_argument("--csv-type", action="append", default=[], metavar="COLUMN=TYPE", help="repeatable")
    p.add_argument("--batch-records", type=positive_int, default=1000)
    p.add_argument("--batch-bytes", type=size, default=4 * MiB)
    p.add_argument("--flush-every-batches", type=positive_int, default=100, help="batches per checkpoint")
    p.add_argument("--flush-interval", type=float, default=5.0, metavar="S", help="flush at least this often")
    p.add_argument("--dedupe-key", help="a column filled with a key from the source position")
    p.add_argument("--dead-letter", metavar="PATH", help="malformed records go here instead of failing")
    p.set_defaults(func=ingest, render=render)
