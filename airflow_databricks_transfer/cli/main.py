"""``adt``: argument parsing, logging, dispatch to the verb modules, and the exit code.

Exit codes: 0 success; 1 failure, said in one line on stderr; 2 usage errors; 130 interrupted (the
checkpoint is kept: run the same command again to resume). ``--json`` prints the result as one JSON
document on stdout; progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from airflow_databricks_transfer import __version__
from airflow_databricks_transfer.cli import args as cli_args
from airflow_databricks_transfer.cli import azure, files, ingest, sync, volumes
from airflow_databricks_transfer.cli.errors import CliError, UsageError
from airflow_databricks_transfer.cli.progress import Display
from airflow_databricks_transfer.clients.redact import RedactUrlQueries
from airflow_databricks_transfer.engine.errors import (
    AlreadyExistsError,
    AuthError,
    RemoteNotFoundError,
    RetryBudgetExceeded,
    TransferError,
)
from airflow_databricks_transfer.engine.retry import Cancelled

PROG = "adt"
Verb = Callable[[argparse.Namespace, Display], dict[str, Any]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Resumable, parallel transfers into and out of Databricks Unity Catalog Volumes, "
        "Azure Blob Storage and Zerobus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = cli_args.common()
    db = cli_args.databricks_auth()
    transfer = cli_args.transfer()
    files.add_parsers(sub, [common, db, transfer])
    sync.add_parser(sub, [common, db, transfer])
    files.add_list_parser(sub, [common, db])
    volumes.add_parser(sub, [common, db])
    azure.add_parsers(sub, common, db, transfer)
    ingest.add_parser(sub, common, db)
    return parser


class _Deferred(logging.Handler):
    """Holds warnings until the command's outcome is known."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_DEFERRED = _Deferred()
_DEFERRED.addFilter(RedactUrlQueries())


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # a handler filter sees every record, child loggers' too: presigned URL queries never reach stderr
    handler.addFilter(RedactUrlQueries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # the package's warnings (a checkpoint discarded, a remote file changed) are shown after a success;
        # after a failure the one-line error says why, and a warning would only repeat it
        package = logging.getLogger("airflow_databricks_transfer")
        package.addHandler(_DEFERRED)
        package.propagate = False
    if not verbose:
        # e.g. "Failed to automatically resolve config from host metadata": noise on every run
        logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
    if verbose:
        # urllib3's connection lines carry full URLs, with presigned queries: the filter strips them
        logging.getLogger("urllib3").setLevel(logging.DEBUG)


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, AuthError):
        return f"authentication failed: {text}"
    if isinstance(err, RemoteNotFoundError):
        return f"not found: {text}"
    if isinstance(err, AlreadyExistsError):
        return f"already exists: {text}"
    if isinstance(err, RetryBudgetExceeded):
        return f"{text} (the checkpoint is kept: run the same command again to resume)"
    if isinstance(err, TransferError):
        return f"{type(err).__name__}: {text}"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or text}"
    return text if isinstance(err, CliError) else f"{type(err).__name__}: {text}"


def _render(result: dict[str, Any]) -> str:
    if result.get("dry_run"):
        resume = ", resuming a checkpoint" if result.get("would_resume") else ""
        exists = " (exists, would be overwritten)" if result.get("destination_exists") else ""
        where = f"{result['source']} -> {result['destination']}{exists}"
        return f"would copy {where}: {result['bytes']} bytes{resume}"
    if "destination" in result and "bytes" in result:
        resumed = result.get("bytes_resumed") or 0
        extra = f", {resumed} bytes resumed" if resumed else ""
        if result.get("restarted_reason"):
            extra += f"; started clean: {result['restarted_reason']}"
        return (
            f"{result['source']} -> {result['destination']}: {result['bytes']} bytes in "
            f"{result.get('seconds', 0):.1f} s ({result.get('mib_per_s', 0):.1f} MiB/s{extra})"
        )
    return json.dumps(result, indent=2, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    display = Display(enabled=not args.no_progress, interval_s=args.progress_interval)
    func: Verb = args.func
    try:
        result = func(args, display)
    except UsageError as err:
        parser.error(str(err))  # exits 2
    except Cancelled:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure becomes one line and exit code 1
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {_describe(err)}", file=sys.stderr)
        return 1
    for message in _DEFERRED.messages:
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    if args.json:
        json.dump(result, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        render: Callable[[dict[str, Any]], str] = getattr(args, "render", _render)
        print(render(result))
    return 1 if result.get("failed") else 0
