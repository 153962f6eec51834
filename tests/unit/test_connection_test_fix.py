"""The request rewrite behind the Test button fix (through a real api-server: test_ui_browser.py)."""

from __future__ import annotations

import json

import pytest

from airflow_databricks_transfer.plugins.connection_test import normalise_test_body


def test_port_zero_of_a_databricks_connection_is_dropped() -> None:
    body = {"connection_id": "c", "conn_type": "databricks", "host": "h", "password": "***", "port": 0}
    out = json.loads(normalise_test_body(json.dumps(body).encode()))
    assert out == {k: v for k, v in body.items() if k != "port"}


@pytest.mark.parametrize(
    "body",
    [
        {"conn_type": "databricks", "port": 443},  # a real port: a real change of destination
        {"conn_type": "databricks", "port": None},
        {"conn_type": "databricks", "port": False},
        {"conn_type": "databricks"},
        {"conn_type": "generic", "port": 0},  # other connection types are not ours to change
        ["not", "an", "object"],
    ],
)
def test_everything_else_passes_unchanged(body: object) -> None:
    raw = json.dumps(body).encode()
    assert normalise_test_body(raw) is raw
    assert normalise_test_body(b"{not json") == b"{not json"
