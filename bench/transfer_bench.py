"""2 GiB upload and download through DatabricksFilesHook vs databricks-sdk FilesExt, against the emulator.

The Files API emulator runs as one subprocess, root on /dev/shm, in benchmark-sink mode for uploads
(``discard_part_bodies``: part bodies are read and dropped, so the server is not what limits a client);
downloads are served with sendfile from a 2 GiB object uploaded once (not in sink mode) from the source.
Every client run is a fresh subprocess (this file with ``--worker``): it imports and connects, reports
ready, the bench normalizes memory (touch and free ``--prefault-mib`` in a throwaway process), then the
worker times only the transfer call and reports wall time, CPU (getrusage, all threads) and RSS (VmRSS
before the call; VmHWM reset before the call and read after it, so import peaks are excluded).

Variants run interleaved in rotating order after one untimed warm-up each; the ceilings (curl PUT to a
presigned part URL of the sink, curl GET, and a lean raw-socket Python client from emulator_bench.py)
are measured in the same rounds.

    bench/run.sh transfer [--size-mib 2048] [--runs 5] [--parallelism 4] [--also-disk] ...

Rates are MiB/s (2**20 bytes per second). Results go to stdout and bench/results/transfer-*.json.
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
import select
import shutil
import signal
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
    CLK_TCK,
    FILES_API,
    HOST,
    REPO_ROOT,
    RESULTS_DIR,
    TOKEN,
    VOL_PATH,
    VOLUME,
    Child,
    GiB,
    MiB,
    _die_with_parent,
    emulator_upload,
    fs_type,
    get_ranges,
    json_call,
    proc_cpu_s,
    reset_hwm,
)
from emulator_bench import Config as LeanConfig

CONN_ID = "dbx_bench"
SDK_DIR = REPO_ROOT / ".sdk" / "databricks-sdk-0.162.0"
OURS_PART = 16 * MiB  # UploadOptions() default part size (planning.DEFAULT_PART_SIZE_BYTES)
OURS_DL_BUFFER = 4 * MiB  # DownloadOptions() default buffer_size_bytes
LEAN_PART = 16 * MiB
LEAN_RANGE = 32 * MiB
MARK = "@@"


# ============================================================================ worker (one client run)
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _emit(tag: str, payload: Any = None) -> None:
    sys.stdout.write(f"{MARK}{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def _prepare_ours(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    from airflow.sdk.lineage import get_hook_lineage_collector

    from airflow_databricks_transfer import __version__
    from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
    from airflow_databricks_transfer.engine.download import DownloadOptions
    from airflow_databricks_transfer.engine.localstate import FileCheckpointSink
    from airflow_databricks_transfer.engine.upload import UploadOptions
    from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

    hook = DatabricksFilesHook(CONN_ID)
    _ = hook.client  # connection lookup and WorkspaceClient: setup, not transfer
    # Airflow's provider discovery for hook lineage, once per process (~0.7 CPU-s here, the same for
    # every hook that reports lineage): setup, not transfer. The README gives the one-time cost.
    get_hook_lineage_collector()
    par = spec["parallelism"]
    if spec["op"] == "upload":
        up = UploadOptions(parallelism=par, verify_sha256=spec["sha256"])
        sink = FileCheckpointSink(spec["checkpoint"], UploadCheckpoint) if spec.get("checkpoint") else None

        def upload() -> dict[str, Any]:
            return hook.upload_file(spec["local"], spec["remote"], options=up, sink=sink).to_dict()

        return upload, __version__
    down = DownloadOptions(parallelism=par, compute_sha256=spec["sha256"])

    def download() -> dict[str, Any]:
        return hook.download_file(spec["remote"], spec["local"], options=down).to_dict()

    return download, __version__


def _prepare_fx(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
    from databricks.sdk.version import __version__

    w = WorkspaceClient(config=Config(host=spec["host"], token=TOKEN))
    par = spec["parallelism"]

    def upload() -> dict[str, Any]:
        w.files.upload_from(spec["remote"], spec["local"], overwrite=True, use_parallel=True, parallelism=par)
        return {}

    def download() -> dict[str, Any]:
        w.files.download_to(spec["remote"], spec["local"], overwrite=True, use_parallel=True, parallelism=par)
        return {}

    return (upload if spec["op"] == "upload" else download), __version__


def _prepare_lean(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    port, size, par = spec["port"], spec["size"], spec["parallelism"]
    if spec["op"] == "upload":
        cfg = LeanConfig(Path(spec["local"]), size, LEAN_PART, par, "sendall", 120.0)
        name = spec["remote"].rsplit("/", 1)[1]

        def upload() -> dict[str, Any]:
            return emulator_upload(cfg, port, name, spec["server_pid"])

        return upload, "emulator_bench"
    cfg = LeanConfig(Path(spec["local"]), size, LEAN_RANGE, par, "sendall", 120.0)

    def download() -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        get_ranges(cfg, port, FILES_API + spec["remote"], auth, Path(spec["local"]))
        return {}

    return download, "emulator_bench"


def worker_main(spec: dict[str, Any]) -> int:
    prepare = {"ours": _prepare_ours, "fx": _prepare_fx, "lean": _prepare_lean}[spec["client"]]
    run, version = prepare(spec)
    _emit("READY", {"version": version})
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
            "cpu_user_s": r1.ru_utime - r0.ru_utime,
            "cpu_sys_s": r1.ru_stime - r0.ru_stime,
            "rss_start_mib": rss_start / 1024,
            "peak_rss_mib": _status_kib("VmHWM") / 1024 if hwm_reset else r1.ru_maxrss / 1024,
            "hwm_reset": hwm_reset,
            "process_maxrss_mib": r1.ru_maxrss / 1024,
            "version": version,
            "result": result,
        },
    )
    return 0


# ============================================================================ bench side
class _Current:
    """The one worker or curl running now, killed (by its pid) if the bench is interrupted."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def kill(cls) -> None:
        p = cls.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        cls.proc = None


def _read_mark(proc: subprocess.Popen[bytes], tag: str, deadline: float, log: Path) -> Any:
    assert proc.stdout is not None
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        for line in buf.split(b"\n")[:-1]:
            text = line.decode(errors="replace")
            if text.startswith(MARK + tag + " "):
                return json.loads(text[len(MARK + tag) + 1 :])
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"worker gave no {tag} in time; log {log}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"worker exited before {tag}:\n{_tail(log)}")
            buf += chunk


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-3000:]
    return ""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def prefault(mib: int) -> None:
    """Touch and free ``mib`` MiB in a throwaway process: the same memory state before every run."""
    if mib > 0:
        subprocess.run([sys.executable, "-S", "-c", f"b = b'\\x01' * {mib * MiB}"], check=True)


def busy_cpu_s() -> tuple[float, float]:
    """Machine-wide busy CPU-seconds (user, nice, system, irq, softirq) and steal, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = vals
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def kthreads_cpu_s() -> float:
    """CPU-seconds of all kernel threads (writeback, ksoftirqd, ...): not another workload."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[6]) & 0x00200000:  # PF_KTHREAD
                total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def pytest_running() -> bool:
    return subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, check=False).returncode == 0


_pytest_wait_left = [0.0]  # seconds the whole bench may still spend waiting for pytest


def wait_for_pytest() -> float:
    """Wait while a pytest run (e.g. another agent's) shares the machine, up to a budget for the whole
    bench; returns the seconds waited. Runs disturbed anyway are caught by their foreign CPU time."""
    t0 = time.monotonic()
    while _pytest_wait_left[0] > 0 and pytest_running():
        time.sleep(5)
        _pytest_wait_left[0] -= 5
    return time.monotonic() - t0


@dataclass
class Sample:
    seconds: float
    mibps: float
    cpu_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    rss_start_mib: float | None = None
    peak_rss_mib: float | None = None
    process_maxrss_mib: float | None = None
    server_cpu_s: float = 0.0
    process_cpu_s: float = 0.0  # whole child process (imports included), from RUSAGE_CHILDREN
    waited_for_pytest_s: float = 0.0
    foreign_cpu_s: float = 0.0  # CPU of other user processes during the transfer (machine busy - ours)
    kernel_threads_cpu_s: float = 0.0  # e.g. writeback of a download to disk
    steal_s: float = 0.0
    pytest_seen: bool = False
    checks: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mib(self) -> float | None:
        if self.peak_rss_mib is None or self.rss_start_mib is None:
            return None
        return self.peak_rss_mib - self.rss_start_mib


@dataclass
class Variant:
    key: str
    label: str
    direction: str  # "upload" | "download"
    dest: str  # "sink" for uploads; "tmpfs" | "disk" | "null" for downloads
    role: str  # "ours" | "fx" | "ceiling"
    run: Callable[[bool], Sample]  # argument: warm-up (verify more, untimed)
    samples: list[Sample] = field(default_factory=list)
    discarded: list[Sample] = field(default_factory=list)  # disturbed runs that were done again
    version: str = ""


@dataclass
class Ctx:
    args: argparse.Namespace
    size: int
    work: Path
    source: Path
    src_sha: str
    emu: Child
    emu_root: Path
    host: str
    download_remote: str
    dest_dirs: dict[str, Path]
    ckpt_dir: Path
    env_ours: dict[str, str]
    env_fx: dict[str, str]


def run_worker(ctx: Ctx, spec: dict[str, Any], env: dict[str, str], log_name: str) -> Sample:
    args = ctx.args
    log = ctx.work / f"{log_name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    cpu0 = _children_cpu()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logf,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C reaches only the bench, which then kills it
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the bench runs no threads
        )
    _Current.proc = proc
    try:
        deadline = time.monotonic() + args.worker_timeout_s
        ready = _read_mark(proc, "READY", deadline, log)
        waited = wait_for_pytest()
        os.sync()
        prefault(args.prefault_mib)
        srv0, (busy0, steal0), k0 = proc_cpu_s(ctx.emu.pid), busy_cpu_s(), kthreads_cpu_s()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + args.worker_timeout_s  # the waits above do not count
        res = _read_mark(proc, "RESULT", deadline, log)
        srv1, (busy1, steal1), k1 = proc_cpu_s(ctx.emu.pid), busy_cpu_s(), kthreads_cpu_s()
        proc.wait(30)
    finally:
        _Current.kill()
    cpu_user, cpu_sys = res["cpu_user_s"], res["cpu_sys_s"]
    return Sample(
        foreign_cpu_s=(busy1 - busy0) - (cpu_user + cpu_sys) - (srv1 - srv0) - (k1 - k0),
        kernel_threads_cpu_s=k1 - k0,
        steal_s=steal1 - steal0,
        pytest_seen=waited > 0 or pytest_running(),
        seconds=res["seconds"],
        mibps=ctx.size / MiB / res["seconds"],
        cpu_s=cpu_user + cpu_sys,
        cpu_user_s=cpu_user,
        cpu_sys_s=cpu_sys,
        rss_start_mib=res["rss_start_mib"],
        peak_rss_mib=res["peak_rss_mib"],
        process_maxrss_mib=res["process_maxrss_mib"],
        server_cpu_s=srv1 - srv0,
        process_cpu_s=_children_cpu() - cpu0,
        waited_for_pytest_s=waited,
        checks={"version": ready["version"]},
        result=res["result"],
    )


def run_curl(ctx: Ctx, curl_args: list[str], url: str, output: str = "/dev/null") -> Sample:
    waited = wait_for_pytest()
    os.sync()
    prefault(ctx.args.prefault_mib)
    cmd = ["curl", "-sS", "-o", output, "-w", "%{http_code} %{time_total}", *curl_args, url]
    cpu0, srv0, (busy0, steal0) = _children_cpu(), proc_cpu_s(ctx.emu.pid), busy_cpu_s()
    k0 = kthreads_cpu_s()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _Current.proc = proc
    try:
        out, err = proc.communicate(timeout=ctx.args.worker_timeout_s)
    finally:
        _Current.kill()
    srv1, cpu, (busy1, steal1) = proc_cpu_s(ctx.emu.pid), _children_cpu() - cpu0, busy_cpu_s()
    k1 = kthreads_cpu_s()
    code, _, secs = out.decode().strip().partition(" ")
    if code not in ("200", "201", "206") or not secs:
        raise RuntimeError(f"curl {url[:100]} answered {code!r}: {err.decode()[:300]}")
    seconds = float(secs)
    return Sample(
        seconds=seconds,
        mibps=ctx.size / MiB / seconds,
        cpu_s=cpu,
        server_cpu_s=srv1 - srv0,
        process_cpu_s=cpu,
        waited_for_pytest_s=waited,
        foreign_cpu_s=(busy1 - busy0) - cpu - (srv1 - srv0) - (k1 - k0),
        kernel_threads_cpu_s=k1 - k0,
        steal_s=steal1 - steal0,
        pytest_seen=waited > 0 or pytest_running(),
        checks={"http_code": int(code)},
    )


# ---------------------------------------------------------------------------- variants
def remote_file(ctx: Ctx, remote: str) -> Path:
    return remote_file_path(ctx.emu_root, remote)


def expected_composite(path: Path, size: int, part: int) -> str:
    digests = []
    with open(path, "rb", buffering=0) as f:
        buf = memoryview(bytearray(part))
        for off in range(0, size, part):
            n = f.readinto(buf[: min(part, size - off)])
            digests.append(hashlib.sha256(buf[:n]).digest())
    return f"{hashlib.sha256(b''.join(digests)).hexdigest()}-{len(digests)}"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def clear_dir(d: Path) -> None:
    for p in d.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def upload_variant(ctx: Ctx, key: str, label: str, client: str, **opts: Any) -> Variant:
    remote = f"{VOL_PATH}/up-{key}.bin"
    role = {"ours": "ours", "fx": "fx"}.get(client, "ceiling")

    def run(warmup: bool) -> Sample:
        remote_file(ctx, remote).unlink(missing_ok=True)
        spec = {
            "client": client,
            "op": "upload",
            "host": ctx.host,
            "port": ctx.emu.port,
            "server_pid": ctx.emu.pid,
            "local": str(ctx.source),
            "remote": remote,
            "size": ctx.size,
            "parallelism": ctx.args.parallelism,
            "sha256": opts.get("sha256", False),
            "checkpoint": None,
        }
        ckpt = ctx.ckpt_dir / f"{key}.json"
        if opts.get("checkpoint"):
            spec["checkpoint"] = str(ckpt)
        env = ctx.env_fx if client == "fx" else ctx.env_ours
        s = run_worker(ctx, spec, env, f"{key}-{len(v.samples)}{'-warmup' if warmup else ''}")
        stored = remote_file(ctx, remote)
        s.checks["remote_size_ok"] = stored.exists() and stored.stat().st_size == ctx.size
        if opts.get("checkpoint"):
            s.checks["checkpoint_cleared"] = not ckpt.exists()
        composite = s.result.get("sha256_composite")
        if composite:
            s.checks["sha256_composite_ok"] = composite == ctx.args.expected_composite
        stored.unlink(missing_ok=True)  # sparse in sink mode; untimed
        return s

    v = Variant(key, label, "upload", "sink", role, run)
    return v


def download_variant(ctx: Ctx, key: str, label: str, client: str, dest: str, sha256: bool = False) -> Variant:
    role = {"ours": "ours", "fx": "fx"}.get(client, "ceiling")
    out_dir = ctx.dest_dirs[dest]

    def run(warmup: bool) -> Sample:
        local = out_dir / f"{key}.bin"
        spec = {
            "client": client,
            "op": "download",
            "host": ctx.host,
            "port": ctx.emu.port,
            "server_pid": ctx.emu.pid,
            "local": str(local),
            "remote": ctx.download_remote,
            "size": ctx.size,
            "parallelism": ctx.args.parallelism,
            "sha256": sha256,
        }
        env = ctx.env_fx if client == "fx" else ctx.env_ours
        try:
            s = run_worker(ctx, spec, env, f"{key}-{len(v.samples)}{'-warmup' if warmup else ''}")
            s.checks["size_ok"] = local.exists() and local.stat().st_size == ctx.size
            if s.result.get("sha256"):
                s.checks["reported_sha256_ok"] = s.result["sha256"] == ctx.src_sha
            if warmup:  # untimed, once per variant: the bytes on disk are the source's
                s.checks["file_sha256_ok"] = file_sha256(local) == ctx.src_sha
        finally:
            clear_dir(out_dir)
        return s

    v = Variant(key, label, "download", dest, role, run)
    return v


def curl_put_variant(ctx: Ctx) -> Variant:
    remote = f"{VOL_PATH}/curl-put.bin"

    def run(warmup: bool) -> Sample:
        init = json_call(ctx.emu.port, "POST", f"{FILES_API}{remote}?action=initiate-upload&overwrite=true")
        token = init["multipart_upload"]["session_token"]
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        body = {
            "path": remote,
            "session_token": token,
            "start_part_number": 1,
            "count": 1,
            "expire_time": expire,
        }
        urls = json_call(ctx.emu.port, "POST", "/api/2.0/fs/create-upload-part-urls", body)
        item = urls["upload_part_urls"][0]
        hdrs = [a for h in item.get("headers") or [] for a in ("-H", f"{h['name']}: {h['value']}")]
        try:
            return run_curl(ctx, ["-H", "Expect:", *hdrs, "-T", str(ctx.source)], item["url"])
        finally:
            abort = f"{FILES_API}{remote}?action=abort-upload&upload_type=multipart&session_token={token}"
            with contextlib.suppress(RuntimeError):
                json_call(ctx.emu.port, "POST", abort)

    return Variant("curl_put", "ceiling: curl -T to a part URL (sink)", "upload", "sink", "ceiling", run)


def curl_get_variant(ctx: Ctx, dest: str) -> Variant:
    url = f"{ctx.host}{FILES_API}{ctx.download_remote}"
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]

    def run(warmup: bool) -> Sample:
        if dest == "null":
            return run_curl(ctx, auth, url)
        out = ctx.dest_dirs[dest] / "curl.bin"
        try:
            return run_curl(ctx, auth, url, str(out))
        finally:
            clear_dir(ctx.dest_dirs[dest])

    label = "ceiling: curl GET -> /dev/null" if dest == "null" else f"ceiling: curl GET -> {dest} file"
    return Variant(f"curl_get_{dest}", label, "download", dest, "ceiling", run)


def build_variants(ctx: Ctx) -> list[Variant]:
    p = ctx.args.parallelism
    vs = [
        upload_variant(ctx, "up_ours", "ours UploadOptions()", "ours"),
        upload_variant(ctx, "up_ours_sha", "ours verify_sha256=True", "ours", sha256=True),
        upload_variant(ctx, "up_ours_ckpt", "ours + FileCheckpointSink", "ours", checkpoint=True),
        upload_variant(ctx, "up_fx", f"FilesExt upload_from(parallelism={p})", "fx"),
        upload_variant(ctx, "up_lean", "ceiling: lean raw-socket 16 MiB sendall", "lean"),
    ]
    if shutil.which("curl"):
        vs.append(curl_put_variant(ctx))
    for dest in ctx.dest_dirs:
        vs += [
            download_variant(ctx, f"dl_ours_{dest}", "ours compute_sha256=False", "ours", dest),
            download_variant(ctx, f"dl_ours_sha_{dest}", "ours compute_sha256=True", "ours", dest, True),
            download_variant(ctx, f"dl_fx_{dest}", f"FilesExt download_to(parallelism={p})", "fx", dest),
            download_variant(
                ctx, f"dl_lean_{dest}", "ceiling: lean raw-socket readinto+pwrite", "lean", dest
            ),
        ]
        if shutil.which("curl"):
            vs.append(curl_get_variant(ctx, dest))
    if shutil.which("curl"):
        vs.append(curl_get_variant(ctx, "null"))
    return vs


# ---------------------------------------------------------------------------- summary and report
def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(v: Variant, size: int) -> dict[str, Any]:
    ss = v.samples
    gib = size / GiB
    rates = [s.mibps for s in ss]
    out: dict[str, Any] = {
        "label": v.label,
        "direction": v.direction,
        "dest": v.dest,
        "role": v.role,
        "version": v.version,
        "n": len(ss),
        "median_mibps": statistics.median(rates),
        "min_mibps": min(rates),
        "max_mibps": max(rates),
        "median_s": statistics.median(s.seconds for s in ss),
        "cpu_s_per_gib": _med([s.cpu_s / gib for s in ss if s.cpu_s is not None]),
        "cpu_user_s_per_gib": _med([s.cpu_user_s / gib for s in ss if s.cpu_user_s is not None]),
        "cpu_sys_s_per_gib": _med([s.cpu_sys_s / gib for s in ss if s.cpu_sys_s is not None]),
        "server_cpu_s_per_gib": _med([s.server_cpu_s / gib for s in ss]),
        "rss_start_mib": _med([s.rss_start_mib for s in ss if s.rss_start_mib is not None]),
        "peak_rss_mib_max": max((s.peak_rss_mib for s in ss if s.peak_rss_mib is not None), default=None),
        "rss_growth_mib_max": max((g for s in ss if (g := s.rss_growth_mib) is not None), default=None),
        "process_cpu_s_median": _med([s.process_cpu_s for s in ss]),
        "redone_runs": len(v.discarded),
        "disturbed_runs_kept": sum(1 for s in ss if disturbed(s)),
        "foreign_cpu_s_median": _med([s.foreign_cpu_s for s in ss]),
        "kernel_threads_cpu_s_per_gib": _med([s.kernel_threads_cpu_s / gib for s in ss]),
        "checks_ok": all(val is not False for s in ss for val in s.checks.values()),
    }
    return out


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b:
        return None
    return float(a["median_mibps"] / b["median_mibps"])


def _fmt(x: float | None, spec: str, width: int) -> str:
    return f"{x:{width}{spec}}" if x is not None else f"{'-':>{width}}"


def print_table(summaries: dict[str, dict[str, Any]]) -> None:
    head = (
        f"  {'variant':<44} {'MiB/s':>7} {'min-max':>11} {'s':>6} {'CPU/GiB':>7} {'usr+sys':>9} "
        f"{'RSS0':>5} {'peak':>5} {'grow':>5} {'srvCPU':>6} {'kCPU':>5} {'vsFX':>5}"
    )
    groups: list[tuple[str, str]] = [("upload", "sink")]
    groups += [("download", d) for d in ("tmpfs", "disk", "null")]
    for direction, dest in groups:
        rows = {k: s for k, s in summaries.items() if s["direction"] == direction and s["dest"] == dest}
        if not rows:
            continue
        fx = next((s for s in rows.values() if s["role"] == "fx"), None)
        title = "upload (sink)" if direction == "upload" else f"download -> {dest}"
        print(f"\n{title}\n{head}")
        for s in rows.values():
            r = ratio(s, fx) if s["role"] != "fx" and fx else None
            split = (
                f"{s['cpu_user_s_per_gib']:.2f}+{s['cpu_sys_s_per_gib']:.2f}"
                if s["cpu_user_s_per_gib"] is not None
                else "-"
            )
            flag = "" if s["checks_ok"] else " CHECK-FAILED"
            print(
                f"  {s['label'][:44]:<44} {s['median_mibps']:7.0f} "
                f"{s['min_mibps']:5.0f}-{s['max_mibps']:<5.0f} {s['median_s']:6.3f} "
                f"{_fmt(s['cpu_s_per_gib'], '.2f', 7)} {split:>9} {_fmt(s['rss_start_mib'], '.0f', 5)} "
                f"{_fmt(s['peak_rss_mib_max'], '.0f', 5)} {_fmt(s['rss_growth_mib_max'], '.0f', 5)} "
                f"{s['server_cpu_s_per_gib']:6.2f} {s['kernel_threads_cpu_s_per_gib']:5.2f} "
                f"{_fmt(r, '.2f', 5)}{flag}"
            )
    print(
        "\n  MiB/s median and min-max; s = median seconds; CPU/GiB = client CPU-s per GiB (transfer only,"
        " median; usr+sys split);\n  RSS0 = RSS before the call, peak = max VmHWM during the call,"
        " grow = max(peak - RSS0), MiB;\n  srvCPU = emulator CPU-s/GiB; kCPU = kernel threads"
        " (writeback, ksoftirqd) CPU-s/GiB; vsFX = median/median."
        "\n  curl rows: CPU is the whole curl process."
    )


def evaluate(summaries: dict[str, dict[str, Any]], vs: list[Variant], args: argparse.Namespace) -> list[Any]:
    s = summaries
    p = args.parallelism
    out: list[Any] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append({"target": name, "pass": ok, "detail": detail})

    up_ratio = ratio(s.get("up_ours"), s.get("up_fx"))
    if up_ratio is not None:
        add("upload >= 1.5x FilesExt", up_ratio >= 1.5, f"{up_ratio:.2f}x (stretch 2x: {up_ratio >= 2.0})")
    if "up_ours" in s:
        cpu = s["up_ours"]["cpu_s_per_gib"]
        add("client CPU <= 0.5 s/GiB (upload)", cpu <= 0.5, f"{cpu:.2f} CPU-s/GiB (median)")
        bound = p * OURS_PART / MiB + 64
        keys = [k for k in ("up_ours", "up_ours_sha", "up_ours_ckpt") if k in s]
        grow = max(s[k]["rss_growth_mib_max"] for k in keys)
        whole = max(s[k]["peak_rss_mib_max"] for k in keys)
        add(
            f"peak RSS <= {p} x 16 MiB + 64 MiB = {bound:.0f} MiB (upload)",
            grow <= bound,
            f"growth during the call {grow:.0f} MiB (max over {len(keys)} variants x runs); "
            f"whole process {whole:.0f} MiB incl. Airflow+SDK imports",
        )
    sha_ratio = ratio(s.get("up_ours_sha"), s.get("up_fx"))
    if sha_ratio is not None:
        add("upload with SHA-256 >= 1.1x FilesExt", sha_ratio >= 1.1, f"{sha_ratio:.2f}x")
    for dest in ("tmpfs", "disk"):
        dl = s.get(f"dl_ours_{dest}")
        dl_ratio = ratio(dl, s.get(f"dl_fx_{dest}"))
        dl_keys = [k for k in (f"dl_ours_{dest}", f"dl_ours_sha_{dest}") if k in s]
        if dl is not None and dl_ratio is not None:
            bound = p * OURS_DL_BUFFER / MiB + 64
            grow = max(s[k]["rss_growth_mib_max"] for k in dl_keys)
            sha_r = ratio(s.get(f"dl_ours_sha_{dest}"), s.get(f"dl_fx_{dest}"))
            add(
                f"download to {dest} >= 1.0x FilesExt, memory <= {bound:.0f} MiB",
                dl_ratio >= 1.0 and grow <= bound,
                f"{dl_ratio:.2f}x with compute_sha256=False ({_fmt(sha_r, '.2f', 0)}x with the default "
                f"compute_sha256=True); RSS growth {grow:.0f} MiB",
            )
        lean_r = ratio(dl, s.get(f"dl_lean_{dest}"))
        if dl is not None and lean_r is not None:
            cpu = dl["cpu_s_per_gib"]
            lean_cpu = s[f"dl_lean_{dest}"]["cpu_s_per_gib"]
            add(
                f"download to {dest} (compute_sha256=False) >= 0.8x the lean client",
                lean_r >= 0.8,
                f"{lean_r:.2f}x; {cpu:.2f} vs {lean_cpu:.2f} client CPU-s/GiB",
            )
    base, ck = s.get("up_ours"), s.get("up_ours_ckpt")
    if base and ck:
        over = ck["median_s"] / base["median_s"] - 1
        by_key = {v.key: v for v in vs}
        pairs = [
            b.seconds / a.seconds - 1
            for a, b in zip(by_key["up_ours"].samples, by_key["up_ours_ckpt"].samples, strict=False)
        ]
        cpu_over = ck["cpu_s_per_gib"] / base["cpu_s_per_gib"] - 1
        spread = (base["max_mibps"] - base["min_mibps"]) / base["median_mibps"]
        add(
            "checkpoint overhead <= 2% (FileCheckpointSink vs none)",
            over <= 0.02,
            f"{over * 100:+.1f}% median time (paired per round {statistics.median(pairs) * 100:+.1f}%; "
            f"CPU {cpu_over * 100:+.1f}%; run-to-run spread of the baseline {spread * 100:.0f}%"
            + (", far above 2%: use more --runs)" if spread > 0.08 else ")"),
        )
    return out


# ---------------------------------------------------------------------------- main
def make_source(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=2048, help="size of the file moved (default 2048)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--parallelism", type=int, default=4, help="for every client (default 4)")
    p.add_argument("--dest-dir", type=Path, default=Path("/dev/shm"), help="download destination (tmpfs)")
    p.add_argument("--also-disk", action="store_true", help="also download to --disk-dir (ext4)")
    p.add_argument(
        "--disk-dir", type=Path, default=Path("/var/tmp"), help="disk-backed dir (default /var/tmp)"
    )
    p.add_argument(
        "--checkpoint-dir", type=Path, default=Path("/var/tmp"), help="where FileCheckpointSink writes"
    )
    p.add_argument("--prefault-mib", type=int, default=2048, help="memory touched+freed before each run")
    p.add_argument("--sdk-path", type=Path, default=SDK_DIR, help="side-installed databricks-sdk 0.162.0")
    p.add_argument("--only", default="", help="comma-separated variant keys to run (default: all)")
    p.add_argument(
        "--max-pytest-wait-s", type=float, default=600, help="total time to wait for pytest runs to end"
    )
    p.add_argument("--max-redo", type=int, default=2, help="repeat a disturbed run up to N times")
    p.add_argument("--worker-timeout-s", type=float, default=300)
    p.add_argument("--timeout-s", type=float, default=2400, help="give up after this many seconds")
    return p


class BenchTimeout(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(json.loads(argv[1]))
    args = build_parser().parse_args(argv)
    if min(args.size_mib, args.runs, args.parallelism) < 1:
        raise SystemExit("size, runs and parallelism must be >= 1")
    if not (args.sdk_path / "databricks" / "sdk").is_dir():
        raise SystemExit(f"databricks-sdk not found under {args.sdk_path}")
    size = args.size_mib * MiB

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchTimeout(f"bench exceeded --timeout-s {args.timeout_s}")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.timeout_s))
    _pytest_wait_left[0] = args.max_pytest_wait_s
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(_Current.kill)
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        work = Path(tempfile.mkdtemp(prefix="xfer-bench-", dir=shm))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        dest_dirs = {"tmpfs": Path(tempfile.mkdtemp(prefix="xfer-bench-dl-", dir=args.dest_dir))}
        stack.callback(shutil.rmtree, dest_dirs["tmpfs"], ignore_errors=True)
        if args.also_disk:
            dest_dirs["disk"] = Path(tempfile.mkdtemp(prefix="xfer-bench-dl-", dir=args.disk_dir))
            stack.callback(shutil.rmtree, dest_dirs["disk"], ignore_errors=True)
        ckpt_dir = Path(tempfile.mkdtemp(prefix="xfer-bench-ckpt-", dir=args.checkpoint_dir))
        stack.callback(shutil.rmtree, ckpt_dir, ignore_errors=True)
        for d, need in ((work, 3 * size), *((d, size) for d in dest_dirs.values())):
            if shutil.disk_usage(d).free < need + 256 * MiB:
                raise SystemExit(f"{d}: needs {need // MiB} MiB free")
        source = work / "source.bin"
        print(f"writing {args.size_mib} MiB source to {source} ...", flush=True)
        src_sha = make_source(source, size)
        args.expected_composite = expected_composite(source, size, OURS_PART)
        emu_root = work / "emu"
        emu_cmd = [sys.executable, "-m", "airflow_databricks_transfer.testing.files_api", "--port", "0"]
        emu_cmd += ["--root", str(emu_root), "--token", TOKEN, "--volume", VOLUME]
        emu = Child("emulator", emu_cmd, work)
        stack.callback(emu.stop)
        host = f"http://{HOST}:{emu.port}"
        # the download object: the source, uploaded once with the part bodies kept
        print("seeding the download object ...", flush=True)
        download_remote = f"{VOL_PATH}/source.bin"
        emulator_upload(
            LeanConfig(source, size, 64 * MiB, 4, "sendall", 120.0), emu.port, "source.bin", emu.pid
        )
        seeded = remote_file_path(emu_root, download_remote)
        if file_sha256(seeded) != src_sha:
            raise RuntimeError("the seeded download object does not match the source")
        json_call(emu.port, "PATCH", "/_emulator/settings", {"discard_part_bodies": True}, auth=False)
        airflow_home = work / "airflow-home"
        airflow_home.mkdir()
        conn = {"conn_type": "databricks", "host": host, "password": TOKEN}
        env_ours = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(conn),
        }
        env_ours.pop("PYTHONPATH", None)
        env_fx = {**os.environ, "PYTHONPATH": f"{args.sdk_path}{os.pathsep}{REPO_ROOT}"}
        ctx = Ctx(
            args, size, work, source, src_sha, emu, emu_root, host, download_remote, dest_dirs, ckpt_dir,
            env_ours, env_fx,
        )  # fmt: skip
        variants = build_variants(ctx)
        if args.only:
            keep = set(args.only.split(","))
            variants = [v for v in variants if v.key in keep]
        try:
            warmups = run_rounds(variants, args)
        except Exception:
            print(f"emulator log tail:\n{emu.log_tail()}", file=sys.stderr)
            raise
        signal.alarm(0)
        summaries = {v.key: summarize(v, size) for v in variants}
        targets = evaluate(summaries, variants, args)
        env_info = {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "source_fs": fs_type(work),
            "dest_fs": {k: fs_type(d) for k, d in dest_dirs.items()},
            "checkpoint_fs": fs_type(ckpt_dir),
            "source_sha256": src_sha,
            "wall_s": time.monotonic() - t_start,
        }
        print(
            f"\nTransfer bench: {args.size_mib} MiB, parallelism {args.parallelism}, {args.runs} runs "
            f"(+1 warm-up) interleaved; {env_info['cpus']} CPUs, kernel {env_info['kernel']}; "
            f"checkpoint on {env_info['checkpoint_fs']}; {env_info['wall_s']:.0f} s"
        )
        redone = sum(x["redone_runs"] for x in summaries.values())
        kept = sum(x["disturbed_runs_kept"] for x in summaries.values())
        print(f"  disturbed runs: {redone} done again, {kept} kept (still disturbed after --max-redo)")
        versions = sorted({f"{v.role}={v.version}" for v in variants if v.role in ("ours", "fx")})
        print("  versions: " + ", ".join(versions))
        print_table(summaries)
        print()
        for t in targets:
            verdict = "PASS" if t["pass"] else "MISS"
            print(f"{verdict}  {t['target']}: {t['detail']}")
        result = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "env": env_info,
            "summaries": summaries,
            "targets": targets,
            "variants": {
                v.key: {
                    "label": v.label,
                    "runs": [asdict(s) for s in v.samples],
                    "discarded_runs": [asdict(s) for s in v.discarded],
                    "warmup": warmups[v.key],
                }
                for v in variants
            },
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"transfer-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"\nresults: {out}")
    return 0


def remote_file_path(emu_root: Path, remote: str) -> Path:
    return emu_root.joinpath(*remote.strip("/").split("/"))


def disturbed(s: Sample) -> str:
    if s.foreign_cpu_s > 0.2 + 0.1 * s.seconds:
        return f"{s.foreign_cpu_s:.2f} CPU-s used by other processes"
    if s.steal_s > 0.1 + 0.1 * s.seconds:
        return f"{s.steal_s:.2f} s stolen by the host"
    return ""


def run_rounds(variants: list[Variant], args: argparse.Namespace) -> dict[str, Any]:
    warmups: dict[str, Any] = {}
    for v in variants:
        s = v.run(True)
        v.version = str(s.checks.get("version", ""))
        warmups[v.key] = asdict(s)
        bad = {k: val for k, val in s.checks.items() if val is False}
        print(f"  warm-up {v.key:<18} {s.mibps:8.1f} MiB/s {s.seconds:7.3f} s" + (f" {bad}" if bad else ""))
    n = len(variants)
    for r in range(args.runs):
        order = variants[r % n :] + variants[: r % n]  # rotate the order every round
        for v in order:
            s = v.run(False)
            for _ in range(args.max_redo):  # another workload shared the CPUs: run it again
                why = disturbed(s)
                if not why:
                    break
                print(f"  run {r + 1}/{args.runs} {v.key:<18} disturbed ({why}): again", flush=True)
                v.discarded.append(s)
                s = v.run(False)
            v.samples.append(s)
            bad = {k: val for k, val in s.checks.items() if val is False}
            rss = f"{s.peak_rss_mib:6.0f} MiB" if s.peak_rss_mib is not None else ""
            print(
                f"  run {r + 1}/{args.runs} {v.key:<18} {s.mibps:8.1f} MiB/s {s.seconds:7.3f} s "
                f"cpu {s.cpu_s or 0:5.2f} s {rss} other {s.foreign_cpu_s:5.2f} s"
                + (f" CHECK {bad}" if bad else "")
                + (f" DISTURBED ({why})" if (why := disturbed(s)) else ""),
                flush=True,
            )
    return warmups


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _Current.kill()
        print("interrupted; subprocesses stopped, temp files removed", file=sys.stderr)
        sys.exit(130)
