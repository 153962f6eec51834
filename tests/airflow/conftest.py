"""Fixtures for Airflow-level tests: a Files API emulator and a throwaway AIRFLOW_HOME for ``dags test``.

Both are module-scoped and lazy: a test module that uses neither pays nothing. The emulator runs in a
thread of the pytest process; ``airflow dags test`` subprocesses reach it over loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.testing.files_api import FilesApiEmulator

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXAMPLE_DAGS = REPO / "dags"
TEST_DAGS = Path(__file__).resolve().parent / "dags"
VOLUME = "main.default.landing"


@dataclass
class DagRunOutput:
    dag_id: str
    returncode: int
    output: str  # stdout and stderr of ``airflow dags test``, interleaved
    seconds: float
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.timed_out and "state=success" in self.output


@dataclass
class AirflowHome:
    """A migrated AIRFLOW_HOME whose ``databricks_default`` connection points at the emulator."""

    home: Path
    env: dict[str, str]
    runs: list[DagRunOutput] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.home / "airflow.db"

    def dags_test(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        dag_file: Path | None = None,
        dags_folder: Path = TEST_DAGS,
        logical_date: str | None = None,
        timeout: float = 240,
    ) -> DagRunOutput:
        """``airflow dags test`` one DAG (the DAG file is named by ``-f``); a run that hangs is killed.

        ``dag_file`` defaults to ``<dags_folder>/<dag_id>.py``.
        """
        dag_file = dag_file or dags_folder / f"{dag_id}.py"
        env = {**self.env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder)}
        cmd = [AIRFLOW, "dags", "test", dag_id, *([logical_date] if logical_date else [])]
        cmd += ["-f", str(dag_file), "-c", json.dumps(conf or {})]
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so a hung run can be stopped whole
        )
        timed_out = False
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[test harness] killed after {timeout:.0f} s\n"
        run = DagRunOutput(dag_id, proc.returncode, output, time.monotonic() - started, timed_out)
        (self.home / f"dags-test-{dag_id}.out").write_text(run.output)
        self.runs.append(run)
        return run


@pytest.fixture(scope="module")
def adt_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApiEmulator]:
    """A Files API emulator with /Volumes/main/default/landing and a token unique to this module."""
    token = "dapi" + secrets.token_hex(16)
    with FilesApiEmulator(tmp_path_factory.mktemp("files-api-root"), volumes=[VOLUME], tokens=[token]) as emu:
        yield emu


@pytest.fixture(scope="module")
def adt_airflow(tmp_path_factory: pytest.TempPathFactory, adt_emulator: FilesApiEmulator) -> AirflowHome:
    """A throwaway AIRFLOW_HOME (SQLite), migrated once per module."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(
                {
                    "conn_type": "databricks",
                    "host": adt_emulator.url,
                    "password": adt_emulator.token,
                    "extra": {"retry_timeout_seconds": 30},
                }
            ),
            "ADT_TEST_EMULATOR_URL": adt_emulator.url,
            "ADT_DEMO_DIR": str(home / "demo"),
        }
    )
    proc = subprocess.run(
        [AIRFLOW, "db", "migrate"],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"airflow db migrate failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return AirflowHome(home, env)
