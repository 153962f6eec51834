"""Opt-in pytest fixtures: ``pytest_plugins = ["airflow_databricks_transfer.testing.pytest_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

DEFAULT_VOLUME = "main.default.landing"


@pytest.fixture
def files_api_emulator(tmp_path: Path) -> Iterator[FilesApiEmulator]:
    """A started Files API emulator on a free loopback port with one volume, /Volumes/main/default/landing."""
    with FilesApiEmulator(tmp_path / "files-api-root", volumes=[DEFAULT_VOLUME]) as emu:
        yield emu
