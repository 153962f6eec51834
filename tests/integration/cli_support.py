"""Running the ``adt`` command line and the standalone Files emulator as subprocesses, for the CLI tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

WORKTREE = Path(__file__).resolve().parents[2]
TOKEN = "dapi-cli-secret-token"
VOLUME = "/Volumes/main/default/cli"


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: this worktree's package, no Databricks settings but what a test adds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "AIRFLOW_CONN_", "ADT_"))}
    env["PYTHONPATH"] = str(WORKTREE)
    env["HOME"] = str(tmp / "home")
    env["XDG_STATE_HOME"] = str(tmp / "state")
    (tmp / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, name: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_emulator/{name}",
            data=data,
            method=method or ("POST" if data is not None else "GET"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.control(f"requests?since={since}")["requests"])

    def last_seq(self) -> int:
        reqs = self.requests()
        return int(reqs[-1]["seq"]) if reqs else 0


@pytest.fixture(scope="module")
def standalone_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """``python -m airflow_databricks_transfer.testing.files_api`` on a free port, with one volume."""
    tmp = tmp_path_factory.mktemp("cli-emulator")
    port_file = tmp / "port"
    log = tmp / "emulator.log"
    with open(log, "wb") as log_f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_databricks_transfer.testing.files_api",
                "--port",
                "0",
                "--root",
                str(tmp / "root"),
                "--token",
                TOKEN,
                "--volume",
                "main.default.cli",
                "--port-file",
                str(port_file),
            ],
            stdout=log_f,
            stderr=subprocess.STDOUT,
            env=base_env(tmp),
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"emulator exited with {proc.returncode}:\n{log.read_text()}")
            try:
                port = int(port_file.read_text())
                break
            except (FileNotFoundError, ValueError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no port file:\n{log.read_text()}") from None
                time.sleep(0.05)
        yield Emulator(proc, port, tmp / "root")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow_databricks_transfer", *args]


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a failed run (the last line of stderr)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, f"no error on stderr (rc {proc.returncode})"
    return lines[-1]
