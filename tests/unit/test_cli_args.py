"""The command line's pure pieces: sizes, blob arguments, destination names, CSV column types."""

from __future__ import annotations

import argparse

import pytest

from airflow_databricks_transfer.cli.args import rate, size
from airflow_databricks_transfer.cli.azure import BlobArg, parse_blob
from airflow_databricks_transfer.cli.errors import UsageError
from airflow_databricks_transfer.cli.files import volume_file_path
from airflow_databricks_transfer.cli.ingest import _csv_types
from airflow_databricks_transfer.cli.main import build_parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1 << 20), ("5MiB", 5 << 20), ("5M", 5_000_000), ("1.5 GiB", 3 << 29), ("64kib", 64 << 10)],
)
def test_sizes(text: str, expected: int) -> None:
    assert size(text) == expected


@pytest.mark.parametrize("text", ["lots", "5 parsecs", "0", "-1MiB", ""])
def test_bad_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        size(text)


def test_rates_take_a_per_second_suffix() -> None:
    assert rate("50MiB/s") == rate("50MiB") == 50 << 20


def test_blob_arguments() -> None:
    assert parse_blob("c/dir/name.bin") == BlobArg("c", "dir/name.bin")
    assert parse_blob("https://acct.blob.core.windows.net/c/a%20b/x.bin?sv=1&sig=s") == BlobArg(
        "c", "a b/x.bin", "https://acct.blob.core.windows.net", "sv=1&sig=s"
    )
    # an emulator's path-style URL carries the account in the path
    assert parse_blob("http://127.0.0.1:10000/devstoreaccount1/c/x") == BlobArg(
        "c", "x", "http://127.0.0.1:10000/devstoreaccount1"
    )
    for bad in ("just-a-container", "https://acct.blob.core.windows.net/c", "/x"):
        with pytest.raises(UsageError):
            parse_blob(bad)


def test_blob_repr_and_display_never_show_the_sas() -> None:
    blob = parse_blob("https://acct.blob.core.windows.net/c/x?sig=secret")
    assert "secret" not in blob.display and "secret" not in repr(blob)


def test_a_trailing_slash_means_into_that_folder() -> None:
    assert volume_file_path("/Volumes/c/s/v/in/", "/tmp/a b.csv") == "/Volumes/c/s/v/in/a b.csv"
    assert volume_file_path("/Volumes/c/s/v/in/x.csv", "/tmp/a.csv") == "/Volumes/c/s/v/in/x.csv"


def test_csv_types() -> None:
    assert _csv_types(["id=int", "ok=bool"]) == {"id": "int", "ok": "bool"}
    with pytest.raises(UsageError):
        _csv_types(["id:int"])


def test_every_verb_parses_its_flags_after_the_verb() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["upload", "a", "/Volumes/c/s/v/a", "--part-size", "8MiB", "--json", "--profile", "p"]
    )
    assert (args.part_size, args.json, args.profile) == (8 << 20, True, "p")
    args = parser.parse_args(["sync", "d", "/Volumes/c/s/v", "--include", "*.csv", "--include", "*.txt"])
    assert args.include == ["*.csv", "*.txt"] and args.naming == "mirror" and args.concurrency == 5
    args = parser.parse_args(
        ["blob-to-volume", "c/b", "/Volumes/c/s/v/b", "--azure-conn-id", "w", "--conn-id", "d"]
    )
    assert (args.azure_conn_id, args.conn_id) == ("w", "d")
    args = parser.parse_args(["azure-download", "c/b", ".", "--conn-id", "w"])
    assert args.azure_conn_id == "w"
