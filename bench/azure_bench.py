"""Azure Blob transfers through our engine vs azure-storage-blob, on one Azurite, with loopback ceilings.

One Azurite (``testing/azurite.py``, data directory in a fresh temp dir under ``--azurite-dir``, deleted
afterwards) and one Files API emulator (root on /dev/shm) serve every variant. A blob of ``--size-mib``
random bytes is uploaded once by our engine (so it carries a whole-blob Content-MD5) and downloaded by:
our Downloader (8 MiB ranges by ``chunk_size_for``, with and without the SHA-256/Content-MD5 pass), the
SDK's ``download_blob(max_concurrency=N).readinto(f)``, and the ``f.write(download_blob().readall())``
that ``WasbHook.get_file`` does. Uploads: our staged 8 MiB blocks with Content-MD5 + commit, against
``upload_blob(f, max_concurrency=N, length=size)`` with and without ``validate_content=True`` (Azurite
hashes MD5 natively but CRC64 in JavaScript, so the MD5 variant is the fair one, reference/azure.md §2).
Blob -> Volume (ours) runs beside its two legs measured alone: our blob download to tmpfs and our
Volume upload of the same bytes from tmpfs. Ceilings in the same rounds: curl GET of the whole blob, a
raw-socket Python GET of it, and a plain loopback TCP stream (sendfile -> recv_into).

Each measured operation is a fresh subprocess (this file with ``--worker``) that imports and connects,
says ready, and on "go" times only the transfer call: wall time, CPU (getrusage, all threads), RSS
before the call and its peak during the call (VmHWM reset through /proc/self/clear_refs, so the import
peak is excluded; ru_maxrss otherwise). Variants are interleaved in a rotating order after one untimed
warm-up each. Every download's output and the Volume files are SHA-256 checked (untimed).

    bench/run.sh azure [--size-mib 1024] [--runs 3] [--parallelism 4] [--quick]

Rates are MiB/s (2**20 bytes per second). Results go to stdout and bench/results/azure-*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from emulator_bench import (
    HOST,
    REPO_ROOT,
    RESULTS_DIR,
    TOKEN,
    VOL_PATH,
    VOLUME,
    Child,
    MiB,
    _die_with_parent,
    fs_type,
    parse_head,
    proc_cpu_s,
    recv_head,
    reset_hwm,
)
from transfer_bench import (
    _children_cpu,
    _Current,
    _emit,
    _read_mark,
    _status_kib,
    busy_cpu_s,
    file_sha256,
    kthreads_cpu_s,
    make_source,
    prefault,
)

sys.path.insert(0, str(REPO_ROOT))  # the worker imports the package from this checkout

from airflow_databricks_transfer.testing.azurite import Azurite

CONTAINER = "bench"
SEED_BLOB = "source.bin"
BLOCK = 8 * MiB  # our upload block (DEFAULT_BLOCK_BYTES) and download range (chunk_size_for, <= 8 GiB)
VOLUME_PART = 16 * MiB  # UploadOptions() default part size (Files API), used by copy_blob_to_volume
ENV_CS = "AZURE_BENCH_CONNECTION_STRING"
ENV_KEY = "AZURE_BENCH_ACCOUNT_KEY"
RECV_BUF = 1 * MiB


# ============================================================================ worker (one measured run)
def _service(sdk_retries: bool) -> Any:
    """Ours runs with the SDK's retries off (as the hook builds it); the SDK variants keep its defaults."""
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    cs = os.environ[ENV_CS]
    if sdk_retries:
        return BlobServiceClient.from_connection_string(cs)
    return BlobServiceClient.from_connection_string(cs, retry_policy=ExponentialRetry(retry_total=0))


def _files_client(spec: dict[str, Any]) -> Any:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    from airflow_databricks_transfer.clients.files_api import FilesApiClient

    return FilesApiClient(WorkspaceClient(config=Config(host=spec["files_host"], token=TOKEN)))


def _prepare(spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    kind, par, local, size = spec["client"], spec["parallelism"], spec["local"], spec["size"]
    container, blob_name = CONTAINER, spec["blob"]
    if kind in ("ours_dl", "ours_up", "ours_b2v", "ours_volup"):
        from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient, BlobRef, chunk_size_for
        from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions
        from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS
        from airflow_databricks_transfer.engine.sources import RemoteRangeSource
        from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions

        az = AzureBlobClient(_service(sdk_retries=False))
        ref = BlobRef(container, blob_name)
        if kind == "ours_dl":
            sha = spec["sha256"]
            md5 = spec.get("md5", sha)

            def ours_dl() -> dict[str, Any]:
                # as AzureBlobTransferHook.download_file: the range size from the blob's size
                source = az.download_source(ref)
                opts = DownloadOptions(
                    parallelism=par,
                    chunk_size_bytes=chunk_size_for(source.stat().size),
                    compute_sha256=sha,
                    verify_content_md5=md5,
                )
                return Downloader(source, local, opts, kind="azure_blob.download").run().to_dict()

            return ours_dl
        if kind == "ours_up":
            # as AzureBlobTransferHook.upload_file's default options (_for_blocks)
            up = UploadOptions(
                parallelism=par,
                multipart_threshold_bytes=16 * MiB,
                limits=AZURE_BLOCKS,
                part_size_bytes=BLOCK,
            )

            def ours_up() -> dict[str, Any]:
                target = az.upload_target(ref)
                return Uploader(target, local, up, kind="azure_blob.upload").run().to_dict()

            return ours_up
        files = _files_client(spec)
        # as copy_blob_to_volume: multipart from the first byte, the Files default part size
        vol = UploadOptions(parallelism=par, multipart_threshold_bytes=1)
        if kind == "ours_b2v":

            def ours_b2v() -> dict[str, Any]:
                source = RemoteRangeSource(az.download_source(ref))
                target = files.upload_target(spec["volume_path"])
                return Uploader(target, source, vol, kind="azure_blob.to_volume").run().to_dict()

            return ours_b2v

        def ours_volup() -> dict[str, Any]:
            target = files.upload_target(spec["volume_path"])
            return Uploader(target, local, vol).run().to_dict()

        return ours_volup
    if kind in ("sdk_dl", "sdk_readall", "sdk_up"):
        client = _service(sdk_retries=True).get_blob_client(container, blob_name)
        if kind == "sdk_dl":

            def sdk_dl() -> dict[str, Any]:
                with open(local, "wb") as f:
                    client.download_blob(max_concurrency=par).readinto(f)
                return {}

            return sdk_dl
        if kind == "sdk_readall":

            def sdk_readall() -> dict[str, Any]:
                with open(local, "wb") as f:  # WasbHook.get_file: the whole blob in memory
                    f.write(client.download_blob().readall())
                return {}

            return sdk_readall
        md5 = spec["validate_content"]

        def sdk_up() -> dict[str, Any]:
            with open(local, "rb") as f:
                client.upload_blob(f, max_concurrency=par, length=size, overwrite=True, validate_content=md5)
            return {}

        return sdk_up
    if kind == "raw_get":
        return _prepare_raw_get(spec)
    if kind == "tcp":
        return _prepare_tcp(spec)
    raise SystemExit(f"unknown client {kind}")


def _blob_sas_path(spec: dict[str, Any]) -> str:
    """The blob's path with a short read-only SAS (built here, never printed or stored)."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    sas = generate_blob_sas(
        spec["account"],
        CONTAINER,
        spec["blob"],
        account_key=os.environ[ENV_KEY],
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return f"/{spec['account']}/{CONTAINER}/{spec['blob']}?{sas}"


def _prepare_raw_get(spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """One whole-blob GET on a raw socket, the body received into a reused buffer and dropped: what a
    Python client can pull from Azurite with no client library in the way."""
    target, port, size = _blob_sas_path(spec), spec["azurite_port"], spec["size"]

    def raw_get() -> dict[str, Any]:
        with socket.create_connection((HOST, port), timeout=120) as sock:
            req = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nx-ms-version: 2025-11-05\r\n\r\n"
            sock.sendall(req.encode())
            status, headers = parse_head(recv_head(sock))
            if " 200 " not in status + " ":
                raise RuntimeError(f"raw GET answered {status}")
            left = int(headers["content-length"])
            if left != size:
                raise RuntimeError(f"raw GET: Content-Length {left}, expected {size}")
            buf = memoryview(bytearray(RECV_BUF))
            while left:
                n = sock.recv_into(buf, min(left, RECV_BUF))
                if not n:
                    raise ConnectionError("Azurite closed the connection inside the body")
                left -= n
        return {}

    return raw_get


def _prepare_tcp(spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """A forked sender sendfile()s the source over loopback; we recv_into a reused buffer: the most any
    client here could move through a socket on this machine."""
    size, source = spec["size"], spec["source"]
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # sender
        try:
            conn, _ = listener.accept()
            with conn, open(source, "rb") as f:
                sent = 0
                while sent < size:
                    sent += os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
        finally:
            os._exit(0)
    listener.close()

    def tcp() -> dict[str, Any]:
        left = size
        buf = memoryview(bytearray(RECV_BUF))
        with socket.create_connection((HOST, port), timeout=120) as sock:
            while left:
                n = sock.recv_into(buf, min(left, RECV_BUF))
                if not n:
                    raise ConnectionError("sender closed early")
                left -= n
        os.waitpid(pid, 0)
        return {}

    return tcp


def worker_main(spec: dict[str, Any]) -> int:
    run = _prepare(spec)
    _emit("READY", {})
    if sys.stdin.readline().strip() != "go":  # the bench normalizes memory meanwhile
        return 1
    gc.collect()
    rss_start = _status_kib("VmRSS")
    hwm_reset = reset_hwm(os.getpid())
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = run()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        "RESULT",
        {
            "seconds": t1 - t0,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "rss_start_mib": rss_start / 1024,
            "peak_rss_mib": _status_kib("VmHWM") / 1024 if hwm_reset else r1.ru_maxrss / 1024,
            "hwm_reset": hwm_reset,
            "result": result,
        },
    )
    return 0


# ============================================================================ bench side
@dataclass
class Sample:
    seconds: float
    mibps: float
    cpu_s: float | None = None
    rss_start_mib: float | None = None
    peak_rss_mib: float | None = None
    server_cpu_s: float = 0.0  # Azurite + Files emulator
    foreign_cpu_s: float = (
        0.0  # other user processes during the run (machine busy - ours - servers - kthreads)
    )
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    key: str
    label: str
    group: str  # "download" | "upload" | "blob->volume" | "ceiling"
    role: str  # "ours" | "sdk" | "leg" | "ceiling"
    run: Callable[[bool], Sample]
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Ctx:
    args: argparse.Namespace
    size: int
    work: Path
    source: Path
    src_sha: str
    azurite: Azurite
    emu: Child
    emu_root: Path
    dl_dir: Path
    env: dict[str, str]

    _service: Any = None

    def service(self) -> Any:
        """The bench's own client (seeding, checks, clean-up), with the SDK's default retries."""
        if self._service is None:
            from azure.storage.blob import BlobServiceClient

            self._service = BlobServiceClient.from_connection_string(self.azurite.connection_string())
        return self._service

    def server_cpu(self) -> float:
        assert self.azurite.pid is not None
        return proc_cpu_s(self.azurite.pid) + proc_cpu_s(self.emu.pid)

    def spec(self, client: str, **kw: Any) -> dict[str, Any]:
        return {
            "client": client,
            "parallelism": self.args.parallelism,
            "size": self.size,
            "source": str(self.source),
            "local": str(self.source),
            "blob": SEED_BLOB,
            "account": self.azurite.account_name,
            "azurite_port": self.azurite.port,
            "files_host": f"http://{HOST}:{self.emu.port}",
            **kw,
        }


def run_worker(ctx: Ctx, spec: dict[str, Any], log_name: str) -> Sample:
    log = ctx.work / f"{log_name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logf,
            env=ctx.env,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C reaches only the bench, which then kills it
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the bench runs no threads
        )
    _Current.proc = proc
    try:
        _read_mark(proc, "READY", time.monotonic() + ctx.args.worker_timeout_s, log)
        os.sync()
        prefault(ctx.args.prefault_mib)
        srv0, (busy0, _), k0 = ctx.server_cpu(), busy_cpu_s(), kthreads_cpu_s()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        res = _read_mark(proc, "RESULT", time.monotonic() + ctx.args.worker_timeout_s, log)
        srv1, (busy1, _), k1 = ctx.server_cpu(), busy_cpu_s(), kthreads_cpu_s()
        proc.wait(30)
    finally:
        _Current.kill()
    return Sample(
        seconds=res["seconds"],
        mibps=ctx.size / MiB / res["seconds"],
        cpu_s=res["cpu_s"],
        rss_start_mib=res["rss_start_mib"],
        peak_rss_mib=res["peak_rss_mib"],
        server_cpu_s=srv1 - srv0,
        foreign_cpu_s=(busy1 - busy0) - res["cpu_s"] - (srv1 - srv0) - (k1 - k0),
        checks={"hwm_reset": res["hwm_reset"]},
    )


def run_curl(ctx: Ctx) -> Sample:
    """curl GET of the whole blob to /dev/null; the SAS URL goes to curl on stdin (``-K -``), not argv."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    sas = generate_blob_sas(
        ctx.azurite.account_name,
        CONTAINER,
        SEED_BLOB,
        account_key=ctx.azurite.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    config = f'url = "{ctx.azurite.blob_endpoint}/{CONTAINER}/{SEED_BLOB}?{sas}"\n'
    os.sync()
    prefault(ctx.args.prefault_mib)
    cmd = ["curl", "-sS", "-K", "-", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]
    cpu0, srv0, (busy0, _), k0 = _children_cpu(), ctx.server_cpu(), busy_cpu_s(), kthreads_cpu_s()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    _Current.proc = proc
    try:
        out, err = proc.communicate(config.encode(), timeout=ctx.args.worker_timeout_s)
    finally:
        _Current.kill()
    srv1, cpu, (busy1, _), k1 = ctx.server_cpu(), _children_cpu() - cpu0, busy_cpu_s(), kthreads_cpu_s()
    code, _, secs = out.decode().strip().partition(" ")
    if code != "200" or not secs:
        raise RuntimeError(f"curl GET of the blob answered {code!r}: {err.decode()[:200]}")
    return Sample(
        seconds=float(secs),
        mibps=ctx.size / MiB / float(secs),
        cpu_s=cpu,
        server_cpu_s=srv1 - srv0,
        foreign_cpu_s=(busy1 - busy0) - cpu - (srv1 - srv0) - (k1 - k0),
    )


# ---------------------------------------------------------------------------- variants
def download_variant(ctx: Ctx, key: str, label: str, client: str, role: str, **kw: Any) -> Variant:
    def run(warmup: bool) -> Sample:
        local = ctx.dl_dir / f"{key}.bin"
        try:
            s = run_worker(ctx, ctx.spec(client, local=str(local), **kw), f"{key}-{len(v.samples)}")
            s.checks["sha256_ok"] = local.exists() and file_sha256(local) == ctx.src_sha
        finally:
            for p in ctx.dl_dir.iterdir():
                p.unlink(missing_ok=True)
        return s

    v = Variant(key, label, "download", role, run)
    return v


def upload_variant(ctx: Ctx, key: str, label: str, client: str, role: str, **kw: Any) -> Variant:
    blob = f"up-{key}.bin"

    def run(warmup: bool) -> Sample:
        s = run_worker(ctx, ctx.spec(client, blob=blob, **kw), f"{key}-{len(v.samples)}")
        bc = ctx.service().get_blob_client(CONTAINER, blob)
        s.checks["size_ok"] = bc.get_blob_properties().size == ctx.size
        if warmup:  # untimed, once per variant: the committed bytes are the source's
            h = hashlib.sha256()
            for piece in bc.download_blob(max_concurrency=4).chunks():
                h.update(piece)
            s.checks["sha256_ok"] = h.hexdigest() == ctx.src_sha
        bc.delete_blob()  # Azurite frees the extents at its next GC pass (every 10 min)
        return s

    v = Variant(key, label, "upload", role, run)
    return v


def volume_variant(ctx: Ctx, key: str, label: str, client: str, role: str) -> Variant:
    name = f"{key}.bin"
    stored = ctx.emu_root.joinpath(*VOL_PATH.strip("/").split("/"), name)

    def run(warmup: bool) -> Sample:
        try:
            s = run_worker(ctx, ctx.spec(client, volume_path=f"{VOL_PATH}/{name}"), f"{key}-{len(v.samples)}")
            s.checks["sha256_ok"] = stored.exists() and file_sha256(stored) == ctx.src_sha
        finally:
            stored.unlink(missing_ok=True)
        return s

    v = Variant(key, label, "blob->volume", role, run)
    return v


def worker_ceiling(ctx: Ctx, key: str, label: str, client: str) -> Variant:
    def run(warmup: bool) -> Sample:
        return run_worker(ctx, ctx.spec(client), f"{key}-{len(v.samples)}")

    v = Variant(key, label, "ceiling", "ceiling", run)
    return v


def build_variants(ctx: Ctx) -> list[Variant]:
    p = ctx.args.parallelism
    vs = [
        download_variant(
            ctx, "dl_ours", "ours Downloader, SHA-256 + Content-MD5", "ours_dl", "ours", sha256=True
        ),
        download_variant(
            ctx, "dl_ours_md5", "ours Downloader, Content-MD5 only", "ours_dl", "ours", sha256=False, md5=True
        ),
        download_variant(
            ctx, "dl_ours_nohash", "ours Downloader, no hashing", "ours_dl", "ours", sha256=False, md5=False
        ),
        download_variant(ctx, "dl_sdk", f"SDK download_blob(mc={p}).readinto", "sdk_dl", "sdk"),
        download_variant(ctx, "dl_readall", "SDK readall() (WasbHook.get_file)", "sdk_readall", "sdk"),
        upload_variant(ctx, "up_ours", "ours 8 MiB blocks + Content-MD5", "ours_up", "ours"),
        upload_variant(ctx, "up_sdk", f"SDK upload_blob(mc={p})", "sdk_up", "sdk", validate_content=False),
        upload_variant(
            ctx,
            "up_sdk_md5",
            f"SDK upload_blob(mc={p}, validate_content)",
            "sdk_up",
            "sdk",
            validate_content=True,
        ),
        volume_variant(ctx, "b2v_ours", "ours Blob -> Volume", "ours_b2v", "ours"),
        volume_variant(ctx, "vol_up", "leg: ours Volume upload from tmpfs", "ours_volup", "leg"),
        worker_ceiling(ctx, "raw_get", "raw-socket GET of the blob (Azurite)", "raw_get"),
        worker_ceiling(ctx, "tcp", "loopback TCP sendfile -> recv_into", "tcp"),
    ]
    if shutil.which("curl"):
        vs.append(
            Variant(
                "curl_get",
                "curl GET of the blob -> /dev/null",
                "ceiling",
                "ceiling",
                lambda _w: run_curl(ctx),
            )
        )
    if ctx.args.only:
        keep = set(ctx.args.only.split(","))
        vs = [v for v in vs if v.key in keep]
    return vs


# ---------------------------------------------------------------------------- report
def summarize(v: Variant) -> dict[str, Any]:
    ss = v.samples
    rates = [s.mibps for s in ss]
    peaks = [s.peak_rss_mib for s in ss if s.peak_rss_mib is not None]
    growth = [s.peak_rss_mib - s.rss_start_mib for s in ss if s.peak_rss_mib is not None and s.rss_start_mib]
    cpu = [s.cpu_s for s in ss if s.cpu_s is not None]
    return {
        "label": v.label,
        "group": v.group,
        "role": v.role,
        "n": len(ss),
        "median_mibps": statistics.median(rates),
        "min_mibps": min(rates),
        "max_mibps": max(rates),
        "median_s": statistics.median(s.seconds for s in ss),
        "client_cpu_s_median": statistics.median(cpu) if cpu else None,
        "server_cpu_s_median": statistics.median(s.server_cpu_s for s in ss),
        "peak_rss_mib_max": max(peaks) if peaks else None,
        "rss_growth_mib_max": max(growth) if growth else None,
        "foreign_cpu_s_max": max(s.foreign_cpu_s for s in ss),
        "checks_ok": all(val is not False for s in ss for val in s.checks.values()),
    }


def _ratio(s: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    if a not in s or b not in s:
        return None
    return float(s[a]["median_mibps"] / s[b]["median_mibps"])


BASE = {"dl_ours": "dl_sdk", "dl_ours_nohash": "dl_sdk", "dl_readall": "dl_sdk", "up_ours": "up_sdk_md5"}
BASE |= {"up_sdk": "up_sdk_md5", "raw_get": "curl_get"}


def _f(x: float | None, spec: str, width: int) -> str:
    return f"{x:{width}{spec}}" if x is not None else f"{'-':>{width}}"


def print_table(s: dict[str, dict[str, Any]]) -> None:
    head = (
        f"  {'variant':<42} {'MiB/s':>6} {'min-max':>11} {'s':>6} {'cliCPU':>6} {'srvCPU':>6} "
        f"{'peak':>5} {'grow':>5}  ratio"
    )
    for group in ("download", "upload", "blob->volume", "ceiling"):
        rows = {k: x for k, x in s.items() if x["group"] == group}
        if not rows:
            continue
        print(f"\n{group}\n{head}")
        for k, x in rows.items():
            base = BASE.get(k)
            if k == "b2v_ours":  # the target compares with the slower of its two legs
                legs = [x for x in ("dl_ours_nohash", "vol_up") if x in s]
                base = min(legs, key=lambda leg: s[leg]["median_mibps"]) if legs else None
            r = _ratio(s, k, base) if base else None
            rtxt = f"{r:5.2f}x {base}" if r is not None else ""
            flag = "" if x["checks_ok"] else "  CHECK-FAILED"
            print(
                f"  {x['label'][:42]:<42} {x['median_mibps']:6.0f} "
                f"{x['min_mibps']:5.0f}-{x['max_mibps']:<5.0f} {x['median_s']:6.2f} "
                f"{_f(x['client_cpu_s_median'], '.2f', 6)} {x['server_cpu_s_median']:6.2f} "
                f"{_f(x['peak_rss_mib_max'], '.0f', 5)} {_f(x['rss_growth_mib_max'], '.0f', 5)}  {rtxt}{flag}"
            )
    print(
        "\n  MiB/s median and min-max over the runs; s = median seconds; cliCPU / srvCPU = median CPU-s"
        " of the client\n  (transfer only; curl: whole process) and of Azurite + the Files emulator;"
        " peak = max VmHWM during the call,\n  grow = max(peak - RSS before the call), MiB"
        " (the process's imports: ~60 MiB for ours, ~50 for the SDK);"
        "\n  ratio = median / median of the variant named."
    )


def evaluate(s: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append({"target": name, "pass": ok, "detail": detail})

    r = _ratio(s, "dl_ours", "dl_sdk")
    if r is not None:
        r2 = _ratio(s, "dl_ours_nohash", "dl_sdk")
        add(
            "download >= 1.5x the SDK",
            r >= 1.5,
            f"{r:.2f}x verified (SHA-256 + Content-MD5); {_f(r2, '.2f', 0)}x without hashing",
        )
    r = _ratio(s, "up_ours", "up_sdk")
    if r is not None:
        r2 = _ratio(s, "up_ours", "up_sdk_md5")
        add(
            "upload >= 1.0x the SDK",
            r >= 1.0,
            f"{r:.2f}x the SDK's default, {_f(r2, '.2f', 0)}x with validate_content=True",
        )
    # the unit each worker holds: 8 MiB ranges and blocks; Blob -> Volume moves 16 MiB Files parts
    units = {"dl_ours": BLOCK, "dl_ours_nohash": BLOCK, "up_ours": BLOCK, "b2v_ours": VOLUME_PART}
    for k, unit in units.items():
        if k not in s or s[k]["rss_growth_mib_max"] is None:
            continue
        bound = args.parallelism * unit / MiB + 64
        grow, whole = s[k]["rss_growth_mib_max"], s[k]["peak_rss_mib_max"]
        add(
            f"RSS of {k} <= {args.parallelism} x {unit // MiB} MiB + 64 MiB = {bound:.0f} MiB",
            grow <= bound,
            f"growth during the call {grow:.0f} MiB (max over the runs); whole process peak {whole:.0f} MiB",
        )
    if all(k in s for k in ("b2v_ours", "dl_ours_nohash", "vol_up")):
        legs = {k: s[k]["median_mibps"] for k in ("dl_ours_nohash", "vol_up")}
        slow = min(legs, key=lambda k: legs[k])
        r = s["b2v_ours"]["median_mibps"] / legs[slow]
        add("Blob -> Volume >= 0.8x the slower leg", r >= 0.8, f"{r:.2f}x {slow} ({legs[slow]:.0f} MiB/s)")
    return out


def run_rounds(variants: list[Variant], args: argparse.Namespace) -> dict[str, Any]:
    warmups: dict[str, Any] = {}
    for v in variants[: len(variants) if args.warmup else 0]:
        s = v.run(True)
        warmups[v.key] = asdict(s)
        bad = {k: val for k, val in s.checks.items() if val is False}
        print(
            f"  warm-up {v.key:<15} {s.mibps:8.1f} MiB/s {s.seconds:7.2f} s"
            + (f" CHECK {bad}" if bad else ""),
            flush=True,
        )
    n = len(variants)
    for r in range(args.runs):
        order = variants[r % n :] + variants[: r % n]  # rotate the order every round
        for v in order:
            s = v.run(not args.warmup and r == 0)
            v.samples.append(s)
            bad = {k: val for k, val in s.checks.items() if val is False}
            rss = f"{s.peak_rss_mib:6.0f} MiB" if s.peak_rss_mib is not None else " " * 10
            busy = f" other {s.foreign_cpu_s:.1f} CPU-s" if s.foreign_cpu_s > 0.2 + 0.1 * s.seconds else ""
            print(
                f"  run {r + 1}/{args.runs} {v.key:<15} {s.mibps:8.1f} MiB/s {s.seconds:7.2f} s {rss}{busy}"
                + (f" CHECK {bad}" if bad else ""),
                flush=True,
            )
    return warmups


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the blob (default 1024)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per variant (default 3)")
    p.add_argument("--parallelism", type=int, default=4, help="for every client (default 4)")
    p.add_argument("--quick", action="store_true", help="smoke test: 64 MiB, 1 run, no warm-up")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up round")
    p.add_argument(
        "--azurite-dir", type=Path, default=Path("/var/tmp"), help="parent of Azurite's temp data dir (disk)"
    )
    p.add_argument(
        "--prefault-mib", type=int, default=None, help="memory touched+freed before each run (= size)"
    )
    p.add_argument("--only", default="", help="comma-separated variant keys (default: all)")
    p.add_argument("--worker-timeout-s", type=float, default=600)
    p.add_argument("--timeout-s", type=float, default=3600, help="give up after this many seconds")
    return p


class BenchTimeout(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(json.loads(argv[1]))
    args = build_parser().parse_args(argv)
    if args.quick:
        args.size_mib, args.runs, args.warmup = 64, 1, False
    if args.prefault_mib is None:
        args.prefault_mib = args.size_mib
    if min(args.size_mib, args.runs, args.parallelism) < 1:
        raise SystemExit("size, runs and parallelism must be >= 1")
    size = args.size_mib * MiB

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchTimeout(f"bench exceeded --timeout-s {args.timeout_s}")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.timeout_s))
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(_Current.kill)
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        work = Path(tempfile.mkdtemp(prefix="azure-bench-", dir=shm))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        az_dir = Path(tempfile.mkdtemp(prefix="azure-bench-azurite-", dir=args.azurite_dir))
        stack.callback(shutil.rmtree, az_dir, ignore_errors=True)
        # every upload run leaves its extents until Azurite's 10-minute GC
        rounds = args.runs + (1 if args.warmup else 0)
        for d, need in ((work, 3 * size), (az_dir, (3 * rounds + 1) * size)):
            if shutil.disk_usage(d).free < need + 256 * MiB:
                raise SystemExit(f"{d}: needs {need // MiB} MiB free")
        source = work / "source.bin"
        print(f"writing {args.size_mib} MiB source to {source} ...", flush=True)
        src_sha = make_source(source, size)
        azurite = Azurite(az_dir / "data")
        stack.enter_context(azurite)
        emu_root = work / "emu"
        emu_cmd = [sys.executable, "-m", "airflow_databricks_transfer.testing.files_api", "--port", "0"]
        emu_cmd += ["--root", str(emu_root), "--token", TOKEN, "--volume", VOLUME]
        emu = Child("emulator", emu_cmd, work)
        stack.callback(emu.stop)
        dl_dir = work / "dl"
        dl_dir.mkdir()
        env = {**os.environ, ENV_CS: azurite.connection_string(), ENV_KEY: azurite.account_key}
        env["PYTHONPATH"] = str(REPO_ROOT)
        ctx = Ctx(args, size, work, source, src_sha, azurite, emu, emu_root, dl_dir, env)
        print("seeding the blob (our upload: 8 MiB blocks + whole-blob Content-MD5) ...", flush=True)
        ctx.service().create_container(CONTAINER)
        seeded = run_worker(ctx, ctx.spec("ours_up"), "seed")
        print(f"  seeded at {seeded.mibps:.0f} MiB/s", flush=True)
        variants = build_variants(ctx)
        try:
            warmups = run_rounds(variants, args)
        except Exception:
            print(f"emulator log tail:\n{emu.log_tail()}", file=sys.stderr)
            raise
        signal.alarm(0)
        summaries = {v.key: summarize(v) for v in variants}
        targets = evaluate(summaries, args)
        import azure.storage.blob

        env_info = {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "azure_storage_blob": azure.storage.blob.__version__,
            "azurite_fs": fs_type(az_dir),
            "download_fs": fs_type(dl_dir),
            "source_sha256": src_sha,
            "wall_s": time.monotonic() - t_start,
        }
        print(
            f"\nAzure bench: {args.size_mib} MiB, parallelism {args.parallelism}, {args.runs} runs"
            f"{' (+1 warm-up)' if args.warmup else ''} interleaved; {env_info['cpus']} CPUs, "
            f"azure-storage-blob {env_info['azure_storage_blob']}; Azurite data on {env_info['azurite_fs']}, "
            f"downloads to {env_info['download_fs']}; {env_info['wall_s']:.0f} s"
        )
        print_table(summaries)
        print()
        for t in targets:
            print(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['detail']}")
        result = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "env": env_info,
            "summaries": summaries,
            "targets": targets,
            "variants": {
                v.key: {
                    "label": v.label,
                    "runs": [asdict(x) for x in v.samples],
                    "warmup": warmups.get(v.key),
                }
                for v in variants
            },
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"azure-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _Current.kill()
        print("interrupted; subprocesses stopped, temp files removed", file=sys.stderr)
        sys.exit(130)
