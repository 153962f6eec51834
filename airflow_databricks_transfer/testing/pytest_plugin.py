"""Opt-in pytest fixtures: ``pytest_plugins = ["airflow_databricks_transfer.testing.pytest_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.faultproxy import FaultProxy
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

if TYPE_CHECKING:
    from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator

DEFAULT_VOLUME = "main.default.landing"


@pytest.fixture
def files_api_emulator(tmp_path: Path) -> Iterator[FilesApiEmulator]:
    """A started Files API emulator on a free loopback port with one volume, /Volumes/main/default/landing."""
    with FilesApiEmulator(tmp_path / "files-api-root", volumes=[DEFAULT_VOLUME]) as emu:
        yield emu


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob service per test session (about 1 s to start); tests use their own containers.

    A missing ``node_modules/.bin/azurite-blob`` fails the test with the command to run (``npm ci``):
    Azure tests must not skip silently.
    """
    with Azurite() as server:
        yield server


@pytest.fixture
def azure_fault_proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's Azurite, fresh per test: no rules, counters at zero.

    Build clients with ``azurite.connection_string(endpoint=f"http://127.0.0.1:{proxy.port}/devstoreaccount1")``.
    """
    with FaultProxy(("127.0.0.1", azurite.port)) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def _zerobus_emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZerobusEmulator]:
    # imported here: deltalake and pyarrow load only for the tests that stream into Zerobus
    from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator  # noqa: PLC0415

    with ZerobusEmulator(tmp_path_factory.mktemp("zerobus-warehouse")) as emu:
        yield emu


@pytest.fixture
def zerobus_emulator(_zerobus_emulator_session: ZerobusEmulator) -> Iterator[ZerobusEmulator]:
    """One Zerobus emulator per session (its first Delta commit costs about a second); each test gets it
    with no fault rules, an empty log and default settings, and creates its own tables
    (``emu.create_table(name, "id BIGINT NOT NULL, body STRING")``).

    Point the SDK at ``ZerobusSdk(emu.endpoint, emu.uc_url)``; OAuth with ``emu.client_id`` /
    ``emu.client_secret``, or a headers provider returning ``emu.headers(table)``.
    """
    emu = _zerobus_emulator_session
    emu.reset()
    defaults = emu.server.settings
    try:
        yield emu
    finally:
        emu.reset()
        emu.server.settings = defaults
