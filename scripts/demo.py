"""Main job: start the Files API emulator as its own process and move a file through it and back.

Until the hook and operators land this drives the official databricks-sdk (multipart parallel upload,
parallel ranged download), so it shows the emulator doing the real protocol, with a summary of what
the server saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
VOLUME = "main.default.landing"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _control(url: str, name: str) -> Any:
    with urllib.request.urlopen(f"{url}/_emulator/{name}", timeout=10) as resp:
        return json.load(resp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--parallelism", type=int, default=4)
    args = ap.parse_args()

    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    with tempfile.TemporaryDirectory(prefix="adt-demo-") as tmp:
        work = Path(tmp)
        port_file = work / "port"
        token = "dapi-demo-token"
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_databricks_transfer.testing.files_api",
                "--root",
                str(work / "root"),
                "--token",
                token,
                "--volume",
                VOLUME,
                "--port-file",
                str(port_file),
            ],
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if emulator.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the emulator did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            src = work / "source.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            remote = f"/Volumes/{VOLUME.replace('.', '/')}/demo/source.bin"
            w = WorkspaceClient(config=Config(host=url, token=token, retry_timeout_seconds=30))

            t0 = time.perf_counter()
            w.files.upload_from(
                remote, str(src), overwrite=True, use_parallel=True, parallelism=args.parallelism
            )
            up_s = time.perf_counter() - t0
            dst = work / "roundtrip.bin"
            t0 = time.perf_counter()
            w.files.download_to(remote, str(dst), use_parallel=True, parallelism=args.parallelism)
            down_s = time.perf_counter() - t0
            meta = w.files.get_metadata(remote)
            same = _sha256(src) == _sha256(dst)
            stats = _control(url, "stats")
            size = args.size_mib * MiB
            parts = stats["bytes_in_by_part"].get(remote, {})
            print()
            print(f"emulator         {url}")
            print(f"remote file      {remote} ({meta.content_length} bytes, {meta.last_modified})")
            print(
                f"upload           {size / MiB:.0f} MiB in {up_s:.2f} s = {size / MiB / up_s:.0f} MiB/s "
                f"({len(parts)} parts, parallelism {args.parallelism})"
            )
            print(
                f"download         {size / MiB:.0f} MiB in {down_s:.2f} s = {size / MiB / down_s:.0f} MiB/s"
            )
            print(f"byte-identical   {'yes' if same else 'NO'} (SHA-256)")
            print(f"server requests  {stats['requests_by_route']}")
            return 0 if same else 1
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
