"""Azurite (the Azure Storage emulator, npm package pinned in package.json), blob service only.

Started on a free loopback port (``--blobPort 0``; the real port is read from its stdout) with a fresh
data directory, so parallel test sessions never share state or a port. ``--skipApiVersionCheck`` is
needed because azure-storage-blob sends an API version newer than Azurite knows; ``--loose`` is never
used, because it turns unsupported checksum requests into silent successes.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite);
# it only ever opens a local emulator.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENS = re.compile(r"successfully listens on https?://[^\s:]+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite is missing, would not start, or stopped answering."""


def find_azurite_bin() -> str:
    """``$AZURITE_BIN``, else ``node_modules/.bin/azurite-blob`` of this checkout or the cwd, else PATH."""
    env = os.environ.get("AZURITE_BIN")
    if env:
        if not Path(env).is_file():
            raise AzuriteError(f"AZURITE_BIN={env} does not exist")
        return env
    for root in (REPO_ROOT, Path.cwd()):
        candidate = root / "node_modules" / ".bin" / "azurite-blob"
        if candidate.is_file():
            return str(candidate)
    on_path = shutil.which("azurite-blob")
    if on_path:
        return on_path
    raise AzuriteError(
        f"azurite-blob not found: run `npm ci` in {REPO_ROOT} (or scripts/bootstrap.sh; needs Node.js 20+ "
        "and npm), or set AZURITE_BIN to an azurite-blob executable"
    )


class Azurite:
    """A running Azurite blob service; stop it with ``stop()`` or by leaving the ``with`` block."""

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.host = host
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.account_name = ACCOUNT_NAME
        self.account_key = ACCOUNT_KEY
        self._given_location = Path(location) if location is not None else None
        self.location: Path | None = self._given_location
        self._proc: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=50)
        self._port_seen = threading.Event()
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        if self._port is None:
            raise AzuriteError("Azurite is not running")
        return self._port

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account_name}"

    def connection_string(self, endpoint: str | None = None) -> str:
        """The dev-account connection string; ``endpoint`` replaces the blob endpoint (e.g. a fault proxy)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={endpoint or self.blob_endpoint};"
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Azurite:
        if self._proc is not None:
            raise AzuriteError("Azurite is already started")
        binary = self.binary or find_azurite_bin()
        if self._given_location is None:
            self.location = Path(tempfile.mkdtemp(prefix="azurite-"))
        else:
            self._given_location.mkdir(parents=True, exist_ok=True)
        assert self.location is not None
        cmd = [
            binary,
            "--blobHost",
            self.host,
            "--blobPort",
            "0",
            "--location",
            str(self.location),
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            *self.extra_args,
        ]
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
        except OSError as exc:  # e.g. node itself is missing (the script's shebang)
            self._remove_location()
            raise AzuriteError(
                f"cannot run {binary}: {exc}; is Node.js 20+ installed? then run `npm ci`"
            ) from exc
        self._reader = threading.Thread(target=self._read_output, name="azurite-stdout", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_output(self) -> None:
        """Drain stdout for the whole run (a full pipe would block Azurite) and catch the port line."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self._output.append(line.rstrip())
            if self._port is None:
                match = _LISTENS.search(line)
                if match:
                    self._port = int(match.group(1))
                    self._port_seen.set()
        self._port_seen.set()  # EOF: let a waiter see that the process is gone

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        if not self._port_seen.wait(self.startup_timeout) or self._port is None:
            raise AzuriteError(self._failure("did not report its port"))
        while True:
            if proc.poll() is not None:
                raise AzuriteError(self._failure("exited during start-up"))
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise AzuriteError(self._failure(f"did not answer HTTP within {self.startup_timeout:.0f} s"))
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Any HTTP response counts: the account listing needs a signature Azurite will reject."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", f"/{self.account_name}?comp=list")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def _failure(self, what: str) -> str:
        code = self._proc.poll() if self._proc is not None else None
        tail = "\n".join(self._output) or "(no output)"
        return f"Azurite {what} (exit code {code}); its output:\n{tail}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Azurite flushes its metadata DB on it), SIGKILL if it hangs, then remove the temp data."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            if self._reader is not None:
                self._reader.join(timeout)
            if proc.stdout is not None:
                proc.stdout.close()
        self._port = None
        self._port_seen.clear()
        self._remove_location()

    def _remove_location(self) -> None:
        if self._given_location is None and self.location is not None:
            shutil.rmtree(self.location, ignore_errors=True)
            self.location = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """Run Azurite in the foreground for manual work: print the connection string, stop on Ctrl-C/SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with Azurite() as azurite:
            print(f"Azurite (pid {azurite.pid}) blob endpoint: {azurite.blob_endpoint}", flush=True)
            print(azurite.connection_string(), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(1.0):
                    if not azurite.running:
                        print(azurite._failure("stopped on its own"), file=sys.stderr)
                        return 1
    except AzuriteError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
