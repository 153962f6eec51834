"""ServerClock: the workspace's clock from its Date headers (whole seconds, a round trip of doubt)."""

from __future__ import annotations

import email.utils
from datetime import datetime

import pytest

from airflow_databricks_transfer.engine.clock import ServerClock


def date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def test_unknown_until_a_date_is_seen() -> None:
    clock = ServerClock()
    clock.observe(None, 0.0, 0.0)
    clock.observe("not a date", 0.0, 0.0)
    assert not clock.known
    assert clock.skew_s == 0.0


@pytest.mark.parametrize("local", [1_000_000_000.0, 1_000_000_000.4, 1_000_000_000.999])
def test_a_clock_the_date_cannot_fault_is_used_as_is(local: float) -> None:
    clock = ServerClock()
    clock.observe(date(1_000_000_000), local - 0.05, local)  # the Date's second holds the local time
    assert clock.known
    assert clock.skew_s == 0.0


def test_server_ahead_takes_the_lower_bound() -> None:
    clock = ServerClock()
    clock.observe(date(1_000_007_200), 1_000_000_000.0, 1_000_000_000.2)
    assert clock.skew_s == pytest.approx(7199.8)  # D - received: the server was at least there


def test_server_behind_takes_the_lower_bound() -> None:
    clock = ServerClock()
    clock.observe(date(1_000_000_000), 1_000_003_600.0, 1_000_003_600.2)
    # the skew lies in [D - received, D + 1 - sent] = [-3600.2, -3599]
    assert clock.skew_s == pytest.approx(-3600.2)


def test_expire_time_is_on_the_server_clock_and_expiry_on_the_local_one() -> None:
    clock = ServerClock()
    clock.observe(date(4_000_000_000), 0.0, 1.0)  # a server far ahead of any real local clock
    text, local_expiry = clock.expire_time(3600)
    assert len(text) == 20 and text.endswith("Z")  # YYYY-MM-DDTHH:MM:SSZ
    server_expiry = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    assert server_expiry >= 4_000_000_000 + 3600 - 1  # an hour past the server's now (whole seconds)
    assert local_expiry < 4_000_000_000  # the worker's own clock says when to refresh
