"""Opt-in pytest fixtures: ``pytest_plugins = ["airflow_databricks_transfer.testing.pytest_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_databricks_transfer.testing.azurite import Azurite
from airflow_databricks_transfer.testing.faultproxy import FaultProxy
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

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
