"""The emulator's command line, run as its own process: a 1 GiB round trip with flat memory, clean SIGTERM."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "dapi-standalone"
VOL = "/Volumes/main/default/v"
SIZE = 1 << 30
CHUNK = 1 << 20
RSS_LIMIT_KIB = 200 * 1024


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes in 1 MiB chunks; return their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def wait_for_port(proc: subprocess.Popen[bytes], port_file: Path, log: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"emulator exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return int(port_file.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"emulator wrote no port file in {timeout} s:\n{log.read_text()}")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_one_gib_round_trip_through_the_cli_streams(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    root = tmp_path / "root"
    port_file = tmp_path / "port"
    log = tmp_path / "emulator.log"
    expected = write_random_file(src, SIZE)

    with open(log, "wb") as log_f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_databricks_transfer.testing.files_api",
                "--port",
                "0",
                "--root",
                str(root),
                "--token",
                TOKEN,
                "--volume",
                "main.default.v",
                "--port-file",
                str(port_file),
            ],
            stdout=log_f,
            stderr=subprocess.STDOUT,
        )
    try:
        port = wait_for_port(proc, port_file, log)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        target = f"/api/2.0/fs/files{VOL}/big/one-gib.bin"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300, blocksize=CHUNK)
        try:
            with open(src, "rb") as body:
                conn.request(
                    "PUT",
                    target + "?overwrite=true",
                    body=body,
                    headers={**auth, "Content-Type": "application/octet-stream", "Content-Length": str(SIZE)},
                )
                resp = conn.getresponse()
                resp.read()
            assert resp.status == 204

            conn.request("HEAD", target, headers=auth)
            head = conn.getresponse()
            head.read()
            assert head.status == 200
            assert head.headers["Content-Length"] == str(SIZE)

            conn.request("GET", target, headers=auth)
            resp = conn.getresponse()
            assert resp.status == 200
            digest = hashlib.sha256()
            received = 0
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                received += len(chunk)
        finally:
            conn.close()
        assert received == SIZE
        assert digest.hexdigest() == expected

        peak = peak_rss_kib(proc.pid)
        assert peak < RSS_LIMIT_KIB, f"emulator peaked at {peak // 1024} MiB RSS for a 1 GiB body"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        src.unlink(missing_ok=True)
        (root / "Volumes" / "main" / "default" / "v" / "big" / "one-gib.bin").unlink(missing_ok=True)
