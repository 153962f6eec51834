"""Volume sync of a tree of many small files (and a few large ones): first sync, no-change re-sync, and
files/s against the databricks-sdk uploading the same small files one by one, against the emulator.

The Files API emulator runs as one subprocess (root on /dev/shm, request-rate limits off, so the server
never answers 429). The source tree is generated once (seeded ``random.randbytes``) under ``--tree-dir``:
``small/dNNN/fNNNNN.bin`` (sizes spread over ``--min-kib``..``--max-kib``) and ``large/bigN.bin``. A
sample of the small files (seeded random picks over every folder, hard links under the same relative
names) is the tree that the slow one-by-one client and the latency scenario use.

Every measured run is a fresh subprocess (this file with ``--worker``): it imports and connects, reports
ready, the bench normalizes memory (touch and free ``--prefault-mib`` in a throwaway process), then the
worker times only the measured call and reports wall time, CPU (getrusage, all threads) and RSS (VmRSS
before the call; VmHWM reset before the call and read after it). The emulator's CPU and its request log
(counts by route, reset before each run) are read around every run.

Variants (the default set; ``--all`` adds ``ours_small`` and ``raw_small``, ``--only`` picks some). The
rounds rotate the order of the variants (``first`` and ``resync`` stay a pair); there is no warm-up run:

- ``first``: ``VolumeSync(...).run()`` of the whole tree into an empty folder with an empty hash cache
  (SyncOptions defaults: 5 files at once), then ``resync``: the same again in a fresh process with the
  same SQLite hash cache and nothing changed. It must hash nothing, read no file and PUT nothing.
- ``ours_small`` (``--all``): the same first sync of the small files only (``small/``).
- ``ours_sample`` / ``sdk_sample``: the sample tree through our sync, and through
  ``WorkspaceClient(...).files.upload(path, f, overwrite=True)`` in a loop (what a user writes without
  this package).
- ``raw_sample`` / ``raw_small`` (``--all``): the loopback ceiling: plain HTTP/1.1
  ``PUT /api/2.0/fs/files/...`` of the same files (read whole, one request each) over
  ``--concurrency`` keep-alive connections on as many threads: what any Python client could reach
  against this server.

With ``--latency-ms N`` (default 20) the sample variants run again on ``--latency-sample`` files of the
sample (default 1000: the SDK loop takes ~25 ms a file there) while the emulator holds every API
request for N ms (a fault rule with ``delay_s``), a stand-in for the round trip to a real workspace,
where files/s is set by the latency and how many requests are in flight, not by loopback CPU.

    bench/run.sh sync [--small-files 20000] [--folders 200] [--large-files 3] [--large-mib 64] [--runs 3]

Rates: files/s and MiB/s (2**20 bytes per second). Results go to stdout and bench/results/sync-*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

from emulator_bench import (
    FILES_API,
    HOST,
    REPO_ROOT,
    RESULTS_DIR,
    TOKEN,
    VOL_PATH,
    VOLUME,
    Child,
    MiB,
    fs_type,
    json_call,
    proc_cpu_s,
    reset_hwm,
)
from transfer_bench import (
    _Current,
    _emit,
    _pytest_wait_left,
    _read_mark,
    _status_kib,
    busy_cpu_s,
    kthreads_cpu_s,
    prefault,
    pytest_running,
    wait_for_pytest,
)

KiB = 1024
SYNC_ROOT = f"{VOL_PATH}/sync"
#: the 20,000-file runs of the small files alone (ours_small, raw_small) are left out by default: the
#: first sync is those files plus the large ones, and the sample compares with the SDK on equal files
_SAMPLE_KEYS = ("ours_sample", "sdk_sample", "raw_sample")
DEFAULT_KEYS = ("first", "resync", *_SAMPLE_KEYS, *(f"lat_{k}" for k in _SAMPLE_KEYS), "lat_resync_sample")


# ============================================================================ worker (one measured run)
def _prepare_sync(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    import airflow_databricks_transfer
    from airflow_databricks_transfer.clients.files_api import FilesApiClient
    from airflow_databricks_transfer.clients.volume_tree import FilesApiVolumeTree
    from airflow_databricks_transfer.engine.sync import SyncOptions, VolumeSync
    from airflow_databricks_transfer.engine.tree import HashCache

    ws = WorkspaceClient(config=Config(host=spec["host"], token=TOKEN))
    tree = FilesApiVolumeTree(FilesApiClient(ws))
    cache = HashCache(spec["cache"])
    opts = SyncOptions() if spec["concurrency"] is None else SyncOptions(concurrency=spec["concurrency"])
    sync = VolumeSync(tree, spec["local"], spec["remote"], opts, hash_cache=cache)

    def run() -> dict[str, Any]:
        res = sync.run()
        out = res.to_dict(max_listed=5)
        out["files"] = res.uploaded
        out["bytes"] = res.bytes_uploaded
        return out

    return run, str(Path(airflow_databricks_transfer.__file__).parent)


def _file_list(spec: dict[str, Any]) -> list[str]:
    return Path(spec["list"]).read_text().splitlines()


def _prepare_sdk(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
    from databricks.sdk.version import __version__

    w = WorkspaceClient(config=Config(host=spec["host"], token=TOKEN))
    rels, root, remote = _file_list(spec), spec["local"], spec["remote"]

    def run() -> dict[str, Any]:
        n = 0
        for rel in rels:
            with open(os.path.join(root, rel), "rb") as f:
                w.files.upload(f"{remote}/{rel}", f, overwrite=True)
            n += os.path.getsize(os.path.join(root, rel))  # after the upload: not timed apart
        return {"files": len(rels), "bytes": n}

    return run, f"databricks-sdk {__version__}"


def _prepare_raw(spec: dict[str, Any]) -> tuple[Callable[[], dict[str, Any]], str]:
    rels, root, remote = _file_list(spec), spec["local"], spec["remote"]
    port, conc = spec["port"], spec["concurrency"] or 5
    auth = f"Bearer {TOKEN}"

    def run() -> dict[str, Any]:
        it = iter(rels)
        lock = threading.Lock()
        totals = [0, 0]
        errors: list[str] = []

        def loop() -> None:
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            sent = files = 0
            try:
                while True:
                    with lock:
                        rel = next(it, None)
                    if rel is None:
                        break
                    with open(os.path.join(root, rel), "rb") as f:
                        data = f.read()
                    target = f"{FILES_API}{quote(f'{remote}/{rel}')}?overwrite=true"
                    headers = {"Authorization": auth, "Content-Type": "application/octet-stream"}
                    conn.request("PUT", target, body=data, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status >= 300:
                        errors.append(f"{rel}: HTTP {resp.status}")
                        break
                    sent += len(data)
                    files += 1
            finally:
                conn.close()
                with lock:
                    totals[0] += files
                    totals[1] += sent

        threads = [threading.Thread(target=loop) for _ in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError("; ".join(errors[:3]))
        return {"files": totals[0], "bytes": totals[1]}

    return run, "http.client keep-alive pool"


def _start_profiling(clock: str) -> list[Any]:
    """cProfile in this thread and in every thread started from now on (the sync's file and hash
    workers): one profiler per thread, merged at the end. ``clock`` "cpu" counts each thread's CPU
    time (where the client's CPU goes), "wall" its wall time (where it waits)."""
    import cProfile

    profilers: list[Any] = []
    timer = time.thread_time if clock == "cpu" else time.perf_counter

    def start(*_: Any) -> None:
        p = cProfile.Profile(timer)
        profilers.append(p)
        p.enable()  # replaces this hook in the new thread

    threading.setprofile(start)
    main = cProfile.Profile(timer)
    profilers.insert(0, main)
    main.enable()
    return profilers


def worker_main(spec: dict[str, Any]) -> int:
    prepare = {"sync": _prepare_sync, "sdk": _prepare_sdk, "raw": _prepare_raw}[spec["client"]]
    run, version = prepare(spec)
    _emit("READY", {"version": version})
    if sys.stdin.readline().strip() != "go":  # the bench normalizes memory meanwhile
        return 1
    gc.collect()
    rss_start = _status_kib("VmRSS")
    hwm_reset = reset_hwm(os.getpid())
    profilers = _start_profiling(spec["profile_clock"]) if spec.get("profile") else None
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = run()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if profilers is not None:
        import pstats

        threading.setprofile(None)
        profilers[0].disable()
        pstats.Stats(*profilers).dump_stats(spec["profile"])
    _emit(
        "RESULT",
        {
            "seconds": t1 - t0,
            "cpu_user_s": r1.ru_utime - r0.ru_utime,
            "cpu_sys_s": r1.ru_stime - r0.ru_stime,
            "rss_start_mib": rss_start / 1024,
            "peak_rss_mib": _status_kib("VmHWM") / 1024 if hwm_reset else r1.ru_maxrss / 1024,
            "hwm_reset": hwm_reset,
            "version": version,
            "result": result,
        },
    )
    return 0


# ============================================================================ bench side
@dataclass
class Sample:
    seconds: float
    files: int
    bytes: int
    cpu_s: float
    rss_start_mib: float
    peak_rss_mib: float
    server_cpu_s: float
    foreign_cpu_s: float
    routes: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    pytest_seen: bool = False

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def mibps(self) -> float:
        return self.bytes / MiB / self.seconds


@dataclass
class Variant:
    key: str
    label: str
    scenario: str  # "loopback" | "latency"
    run: Callable[[], Sample]
    samples: list[Sample] = field(default_factory=list)
    version: str = ""


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    tree: Path
    roots: dict[str, Path]  # "small" (the tree), "sample", "lat": where each file list's names are
    lists: dict[str, Path]
    emu: Child
    emu_root: Path
    host: str
    env: dict[str, str]


def emu_stats(ctx: Ctx) -> dict[str, int]:
    stats = json_call(ctx.emu.port, "GET", "/_emulator/stats", auth=False)
    return {k: int(v) for k, v in stats["requests_by_route"].items()}


def reset_log(ctx: Ctx) -> None:
    json_call(ctx.emu.port, "POST", "/_emulator/reset", {"state": False, "faults": False, "log": True}, False)


def remote_dir(ctx: Ctx, remote: str) -> Path:
    return ctx.emu_root.joinpath(*remote.strip("/").split("/"))


def clear_remote(ctx: Ctx, remote: str) -> None:
    shutil.rmtree(remote_dir(ctx, remote), ignore_errors=True)


def run_worker(ctx: Ctx, spec: dict[str, Any], log_name: str) -> Sample:
    args = ctx.args
    log = ctx.work / f"{log_name}.log"
    spec = {"host": ctx.host, "port": ctx.emu.port, "concurrency": args.concurrency, **spec}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logf,
            env=ctx.env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    _Current.proc = proc
    try:
        ready = _read_mark(proc, "READY", time.monotonic() + args.worker_timeout_s, log)
        waited = wait_for_pytest()
        reset_log(ctx)
        os.sync()
        prefault(args.prefault_mib)
        srv0, (busy0, _), k0 = proc_cpu_s(ctx.emu.pid), busy_cpu_s(), kthreads_cpu_s()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        res = _read_mark(proc, "RESULT", time.monotonic() + args.worker_timeout_s, log)
        srv1, (busy1, _), k1 = proc_cpu_s(ctx.emu.pid), busy_cpu_s(), kthreads_cpu_s()
        proc.wait(30)
    finally:
        _Current.kill()
    cpu = res["cpu_user_s"] + res["cpu_sys_s"]
    out = res["result"]
    return Sample(
        seconds=res["seconds"],
        files=int(out["files"]),
        bytes=int(out["bytes"]),
        cpu_s=cpu,
        rss_start_mib=res["rss_start_mib"],
        peak_rss_mib=res["peak_rss_mib"],
        server_cpu_s=srv1 - srv0,
        foreign_cpu_s=(busy1 - busy0) - cpu - (srv1 - srv0) - (k1 - k0),
        routes=emu_stats(ctx),
        result=out,
        checks={"version": ready["version"]},
        pytest_seen=waited > 0 or pytest_running(),
    )


# ---------------------------------------------------------------------------- data
def make_tree(args: argparse.Namespace, root: Path, sample: Path, lat: Path) -> dict[str, Any]:
    """small/dNNN/fNNNNN.bin spread over the folders, large/bigN.bin, and the samples as hard links."""
    rng = random.Random(args.seed)
    small: list[str] = []
    small_bytes = 0
    folders = max(1, args.folders)
    for d in range(folders):
        (root / "small" / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(args.small_files):
        rel = f"small/d{i % folders:03d}/f{i:05d}.bin"
        size = rng.randint(args.min_kib * KiB, args.max_kib * KiB)
        (root / rel).write_bytes(rng.randbytes(size))
        small.append(rel)
        small_bytes += size
    (root / "large").mkdir(exist_ok=True)
    for i in range(args.large_files):
        with open(root / "large" / f"big{i}.bin", "wb") as f:
            for _ in range(args.large_mib):
                f.write(rng.randbytes(MiB))
    # seeded random picks: a stride would hit only some folders (every 10th of 200 folders: 20 of them)
    picked = sorted(rng.sample(small, min(args.sample, len(small))))
    lat_picked = sorted(rng.sample(picked, min(args.latency_sample, len(picked))))
    for files, under in ((picked, sample), (lat_picked, lat)):
        for rel in files:
            dst = under / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(root / rel, dst)
    return {
        "small": small,
        "small_bytes": small_bytes,
        "sample": picked,
        "sample_bytes": sum((root / r).stat().st_size for r in picked),
        "lat": lat_picked,
        "lat_bytes": sum((root / r).stat().st_size for r in lat_picked),
        "large_bytes": args.large_files * args.large_mib * MiB,
    }


# ---------------------------------------------------------------------------- variants
def sync_variants(
    ctx: Ctx, keys: tuple[str, str], labels: tuple[str, str], scenario: str, local: Path, n_files: int
) -> tuple[Variant, Variant]:
    """A first sync and a no-change re-sync sharing a target and a hash cache; the first sync starts
    both from empty."""
    remote = f"{SYNC_ROOT}/{keys[0]}"
    cache = ctx.work / f"cache-{keys[0]}.sqlite"

    def first() -> Sample:
        clear_remote(ctx, remote)
        for p in ctx.work.glob(f"cache-{keys[0]}.sqlite*"):
            p.unlink()
        s = run_worker(ctx, sync_spec(ctx, local, remote, cache, keys[0]), f"{keys[0]}-{len(v1.samples)}")
        s.checks["uploaded_all"] = s.files == n_files and s.result["failed"] == 0
        s.checks["remote_count_ok"] = count_files(remote_dir(ctx, remote)) == n_files + 1  # + manifest
        return s

    def resync() -> Sample:
        s = run_worker(ctx, sync_spec(ctx, local, remote, cache, keys[1]), f"{keys[1]}-{len(v2.samples)}")
        r = s.result
        s.checks["nothing_uploaded"] = r["uploaded"] == 0 and r["skipped"] == n_files and r["failed"] == 0
        s.checks["no_file_read"] = r["files_hashed"] == 0 and r["bytes_hashed"] == 0
        s.checks["all_from_cache"] = r["hash_cache_hits"] == n_files
        s.checks["no_put"] = s.routes.get("files.put", 0) == 0
        s.files = n_files  # files checked, for files/s of the no-change pass
        clear_remote(ctx, remote)
        return s

    v1 = Variant(keys[0], labels[0], scenario, first)
    v2 = Variant(keys[1], labels[1], scenario, resync)
    return v1, v2


def sync_spec(ctx: Ctx, local: Path, remote: str, cache: Path, key: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"client": "sync", "local": str(local), "remote": remote, "cache": str(cache)}
    if key in ctx.args.profile:
        spec["profile"] = str(ctx.work / f"profile-{key}.pstats")
        spec["profile_clock"] = ctx.args.profile_clock
    return spec


def count_files(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d))


def ours_variant(ctx: Ctx, key: str, label: str, scenario: str, local: Path, n_files: int) -> Variant:
    remote = f"{SYNC_ROOT}/{key}"
    cache = ctx.work / f"cache-{key}.sqlite"

    def run() -> Sample:
        clear_remote(ctx, remote)
        for p in ctx.work.glob(f"cache-{key}.sqlite*"):
            p.unlink()
        s = run_worker(ctx, sync_spec(ctx, local, remote, cache, key), f"{key}-{len(v.samples)}")
        s.checks["uploaded_all"] = s.files == n_files and s.result["failed"] == 0
        clear_remote(ctx, remote)
        return s

    v = Variant(key, label, scenario, run)
    return v


def list_variant(ctx: Ctx, key: str, label: str, scenario: str, client: str, which: str) -> Variant:
    remote = f"{SYNC_ROOT}/{key}"
    local = ctx.roots[which]
    n_files = len(ctx.lists[which].read_text().splitlines())

    def run() -> Sample:
        clear_remote(ctx, remote)
        spec = {"client": client, "local": str(local), "remote": remote, "list": str(ctx.lists[which])}
        s = run_worker(ctx, spec, f"{key}-{len(v.samples)}")
        s.checks["uploaded_all"] = s.files == n_files == count_files(remote_dir(ctx, remote))
        clear_remote(ctx, remote)
        return s

    v = Variant(key, label, scenario, run)
    return v


def set_latency(ctx: Ctx, ms: float) -> None:
    """Hold every workspace API request (files, directories, fs) for ``ms`` before answering."""
    json_call(ctx.emu.port, "DELETE", "/_emulator/faults", auth=False)
    if ms > 0:
        rules = [
            {"route": r, "times": None, "delay_s": ms / 1000} for r in ("files.*", "directories.*", "fs.*")
        ]
        json_call(ctx.emu.port, "POST", "/_emulator/faults", {"faults": rules}, auth=False)


# ---------------------------------------------------------------------------- rounds and report
def disturbed(s: Sample) -> str:
    if s.foreign_cpu_s > 0.5 + 0.1 * s.seconds:
        return f"other processes took {s.foreign_cpu_s:.1f} CPU-s"
    return ""


def run_rounds(groups: list[list[Variant]], runs: int) -> None:
    """Each group runs back to back (``first`` then ``resync``); the group order rotates every round."""
    n = len(groups)
    for r in range(runs):
        order = groups[r % n :] + groups[: r % n]
        for group in order:
            for v in group:
                s = v.run()
                v.version = str(s.checks.get("version", ""))
                v.samples.append(s)
                bad = {k: val for k, val in s.checks.items() if val is False}
                why = disturbed(s)
                print(
                    f"  run {r + 1}/{runs} {v.key:<14} {s.files:6d} files {s.seconds:8.3f} s "
                    f"{s.files_per_s:8.1f} files/s {s.mibps:7.1f} MiB/s cpu {s.cpu_s:6.2f} srv "
                    f"{s.server_cpu_s:6.2f} rss {s.peak_rss_mib:5.0f} MiB"
                    + (f" CHECK FAILED {bad}" if bad else "")
                    + (f" [{why}]" if why else ""),
                    flush=True,
                )


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(v: Variant) -> dict[str, Any]:
    ss = v.samples
    secs = [s.seconds for s in ss]
    fps = [s.files_per_s for s in ss]
    routes: dict[str, list[int]] = {}
    for s in ss:
        for k, n in s.routes.items():
            routes.setdefault(k, []).append(n)
    return {
        "key": v.key,
        "label": v.label,
        "scenario": v.scenario,
        "version": v.version,
        "runs": len(ss),
        "files": ss[0].files if ss else 0,
        "seconds_median": med(secs),
        "seconds_min": min(secs, default=float("nan")),
        "seconds_max": max(secs, default=float("nan")),
        "files_per_s_median": med(fps),
        "files_per_s_min": min(fps, default=float("nan")),
        "files_per_s_max": max(fps, default=float("nan")),
        "mib_per_s_median": med([s.mibps for s in ss]),
        "cpu_s_median": med([s.cpu_s for s in ss]),
        "server_cpu_s_median": med([s.server_cpu_s for s in ss]),
        "rss_start_mib": med([s.rss_start_mib for s in ss]),
        "peak_rss_mib": max((s.peak_rss_mib for s in ss), default=float("nan")),
        "requests_by_route_median": {k: med([float(x) for x in xs]) for k, xs in sorted(routes.items())},
        "disturbed_runs": sum(1 for s in ss if disturbed(s)),
        "checks_failed": [k for s in ss for k, val in s.checks.items() if val is False],
    }


def route_text(routes: dict[str, float]) -> str:
    short = {"files.put": "put", "directories.get": "list", "files.get": "get", "files.head": "head"}
    parts = [f"{short.get(k, k)} {n:.0f}" for k, n in routes.items() if n]
    return ", ".join(parts)


def print_report(result: dict[str, Any]) -> None:
    print()
    print(
        f"{'variant':<46}{'files':>6}{'s med':>9}{'min-max':>15}{'files/s':>9}{'min-max':>14}"
        f"{'MiB/s':>7}{'cpu':>7}{'srv':>7}{'RSS0':>6}{'peak':>6}"
    )
    for scenario in ("loopback", "latency"):
        keys = [r for r in result["variants"] if r["scenario"] == scenario]
        if not keys:
            continue
        title = "loopback" if scenario == "loopback" else f"with {result['latency_ms']:g} ms per API request"
        print(f"[{title}]")
        for r in keys:
            print(
                f"  {r['label']:<44}{r['files']:>6}{r['seconds_median']:>9.3f}"
                f"{r['seconds_min']:>7.2f}-{r['seconds_max']:<7.2f}{r['files_per_s_median']:>9.0f}"
                f"{r['files_per_s_min']:>7.0f}-{r['files_per_s_max']:<6.0f}{r['mib_per_s_median']:>7.1f}"
                f"{r['cpu_s_median']:>7.2f}{r['server_cpu_s_median']:>7.2f}{r['rss_start_mib']:>6.0f}"
                f"{r['peak_rss_mib']:>6.0f}"
            )
            print(f"  {'':<44}requests: {route_text(r['requests_by_route_median'])}")
    print()
    for line in result["verdicts"]:
        print(line)


def verdicts(rows: dict[str, dict[str, Any]], variants: dict[str, Variant], latency_ms: float) -> list[str]:
    out: list[str] = []

    def pf(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    if "first" in variants and "resync" in variants:
        f, r = variants["first"].samples, variants["resync"].samples
        per_round = [b.seconds / a.seconds for a, b in zip(f, r, strict=False)]
        ratio = rows["resync"]["seconds_median"] / rows["first"]["seconds_median"]
        hashed = [(s.result["files_hashed"], s.result["bytes_hashed"]) for s in r]
        puts = [s.routes.get("files.put", 0) for s in r]
        rounds = ", ".join(f"{100 * x:.2f}%" for x in per_round)
        out.append(
            f"no-change re-sync: {rows['resync']['seconds_median']:.3f} s = {100 * ratio:.2f}% of the first "
            f"sync's {rows['first']['seconds_median']:.2f} s (per round {rounds})"
            f" -> {pf(ratio < 0.05)} (< 5%, median)"
        )
        out.append(
            f"  files hashed / bytes hashed per re-sync: {hashed}; files.put logged by the emulator: {puts}"
            f" -> {pf(all(h == (0, 0) for h in hashed) and not any(puts))} (nothing read, nothing sent)"
        )
    if "lat_ours_sample" in variants and "lat_resync_sample" in variants:
        r = variants["lat_resync_sample"].samples
        ratio = rows["lat_resync_sample"]["seconds_median"] / rows["lat_ours_sample"]["seconds_median"]
        lists = [s.routes.get("directories.get", 0) for s in r]
        hashed = [s.result["files_hashed"] for s in r]
        puts = [s.routes.get("files.put", 0) for s in r]
        out.append(
            f"no-change re-sync, {latency_ms:g} ms per request, the {rows['lat_ours_sample']['files']}-file"
            f" sample: {rows['lat_resync_sample']['seconds_median']:.3f} s = {100 * ratio:.1f}% of its first"
            f" sync (folder listings per re-sync: {lists}; files hashed:"
            f" {hashed}, files.put: {puts})"
        )
    for scenario, ours_key, what, sdk_key, raw_key in (
        ("loopback", "first", "whole tree, first sync", "sdk_sample", "raw_small"),
        ("loopback", "ours_small", "small files only", "sdk_sample", "raw_small"),
        ("loopback", "ours_sample", "the sample", "sdk_sample", "raw_sample"),
        ("latency", "lat_ours_sample", "the sample", "lat_sdk_sample", "lat_raw_sample"),
    ):
        if ours_key not in rows or sdk_key not in rows:
            continue
        o, s = rows[ours_key], rows[sdk_key]
        x = o["files_per_s_median"] / s["files_per_s_median"]
        where = "loopback" if scenario == "loopback" else f"{latency_ms:g} ms per request"
        line = (
            f"files/s, {where}: ours, {what} ({o['files']} files) {o['files_per_s_median']:.0f} vs the SDK's "
            f"files.upload loop on the sample ({s['files']} files) {s['files_per_s_median']:.0f} = {x:.2f}x"
            f" -> {pf(x >= 5)} (>= 5x)"
        )
        if raw_key in rows:
            c = rows[raw_key]
            line += (
                f"; raw keep-alive PUT ceiling ({c['files']} files) {c['files_per_s_median']:.0f} files/s,"
                f" ours = {o['files_per_s_median'] / c['files_per_s_median']:.2f} of it"
            )
        out.append(line)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-files", type=int, default=20_000, help="small files in the tree (default 20000)")
    p.add_argument("--folders", type=int, default=200, help="folders the small files spread over (200)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest small file, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=64, help="largest small file, KiB (default 64)")
    p.add_argument("--large-files", type=int, default=3, help="large files in the tree (default 3)")
    p.add_argument("--large-mib", type=int, default=64, help="size of each large file, MiB (default 64)")
    p.add_argument("--sample", type=int, default=2000, help="small files the SDK loop uploads (2000)")
    p.add_argument(
        "--latency-sample", type=int, default=1000, help="files of the sample in the latency scenario (1000)"
    )
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--concurrency", type=int, default=None, help="files at once (default: SyncOptions' 5)")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=20.0,
        help="delay per API request in the latency scenario (0: skip)",
    )
    p.add_argument("--latency-runs", type=int, default=None, help="rounds of the latency scenario (--runs)")
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated variant keys (default {','.join(DEFAULT_KEYS)}; also ours_small, raw_small)",
    )
    p.add_argument("--all", action="store_true", help="every variant, ours_small and raw_small too")
    p.add_argument(
        "--max-pytest-wait-s", type=float, default=120.0, help="wait at most this long in all for pytest"
    )
    p.add_argument("--profile", default="", help="comma-separated sync keys to run under cProfile")
    p.add_argument("--profile-clock", choices=["cpu", "wall"], default="cpu", help="per-thread CPU or wall")
    p.add_argument("--tree-dir", type=Path, default=Path("/var/tmp"), help="where the tree is generated")
    p.add_argument("--emu-dir", type=Path, default=Path("/dev/shm"), help="the emulator's root parent")
    p.add_argument("--prefault-mib", type=int, default=1024, help="touch and free this much before each run")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--worker-timeout-s", type=float, default=600.0)
    p.add_argument("--timeout-s", type=float, default=1800.0, help="abort the whole bench after this long")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(json.loads(argv[1]))
    args = build_parser().parse_args(argv)
    if min(args.small_files, args.runs, args.folders) < 1 or args.min_kib > args.max_kib:
        raise SystemExit("counts must be >= 1 and --min-kib <= --max-kib")
    args.profile = {k for k in args.profile.split(",") if k}
    only = {k for k in args.only.split(",") if k} or (set() if args.all else set(DEFAULT_KEYS))
    _pytest_wait_left[0] = args.max_pytest_wait_s

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.timeout_s))
    t_start = time.monotonic()
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        stack.callback(_Current.kill)
        work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.tree_dir))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        emu_root = Path(tempfile.mkdtemp(prefix="sync-bench-emu-", dir=args.emu_dir))
        stack.callback(shutil.rmtree, emu_root, ignore_errors=True)
        tree, sample, lat_tree = work / "tree", work / "sample", work / "sample-latency"
        print(
            f"generating {args.small_files} files of {args.min_kib}-{args.max_kib} KiB in {args.folders}"
            " folders"
            f" + {args.large_files} x {args.large_mib} MiB under {tree} ({fs_type(work)}) ...",
            flush=True,
        )
        t0 = time.monotonic()
        data = make_tree(args, tree, sample, lat_tree)
        print(f"  done in {time.monotonic() - t0:.1f} s", flush=True)
        lists = {k: work / f"{k}.txt" for k in ("small", "sample", "lat")}
        for k, path in lists.items():
            path.write_text("\n".join(data[k]) + "\n")
        emu_cmd = [sys.executable, "-m", "airflow_databricks_transfer.testing.files_api", "--port", "0"]
        emu_cmd += ["--root", str(emu_root), "--token", TOKEN, "--volume", VOLUME]
        emu_cmd += ["--rate-limit-concurrent", "0", "--rate-limit-per-s", "0"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        emu = Child("emulator", emu_cmd, work)  # cwd REPO_ROOT: this checkout's emulator
        stack.callback(emu.stop)
        roots = {"small": tree, "sample": sample, "lat": lat_tree}
        ctx = Ctx(args, work, tree, roots, lists, emu, emu_root, f"http://{HOST}:{emu.port}", env)
        n_small, n_sample, n_lat = len(data["small"]), len(data["sample"]), len(data["lat"])
        first, resync = sync_variants(
            ctx,
            ("first", "resync"),
            ("ours: first sync, whole tree", "ours: no-change re-sync"),
            "loopback",
            tree,
            n_small + args.large_files,
        )
        lat_first, lat_resync = sync_variants(
            ctx,
            ("lat_ours_sample", "lat_resync_sample"),
            ("ours: first sync, the sample", "ours: no-change re-sync"),
            "latency",
            lat_tree,
            n_lat,
        )
        small_tree = tree / "small"
        # ours_small syncs small/ as the root, so the names differ from the lists' by "small/"
        loop: list[list[Variant]] = [
            [first, resync],
            [
                ours_variant(
                    ctx, "ours_small", "ours: first sync, small files only", "loopback", small_tree, n_small
                )
            ],
            [ours_variant(ctx, "ours_sample", "ours: first sync, the sample", "loopback", sample, n_sample)],
            [
                list_variant(
                    ctx, "sdk_sample", "SDK files.upload loop, the sample", "loopback", "sdk", "sample"
                )
            ],
            [
                list_variant(
                    ctx, "raw_small", "ceiling: raw PUT pool, small files", "loopback", "raw", "small"
                )
            ],
            [
                list_variant(
                    ctx, "raw_sample", "ceiling: raw PUT pool, the sample", "loopback", "raw", "sample"
                )
            ],
        ]
        lat: list[list[Variant]] = [
            [lat_first, lat_resync],
            [
                list_variant(
                    ctx, "lat_sdk_sample", "SDK files.upload loop, the sample", "latency", "sdk", "lat"
                )
            ],
            [
                list_variant(
                    ctx, "lat_raw_sample", "ceiling: raw PUT pool, the sample", "latency", "raw", "lat"
                )
            ],
        ]
        if only:
            loop = [[v for v in g if v.key in only] for g in loop]
            lat = [[v for v in g if v.key in only] for g in lat]
            if ("resync" in only and "first" not in only) or (
                "lat_resync_sample" in only and "lat_ours_sample" not in only
            ):
                raise SystemExit(
                    "a re-sync needs its first sync: resync needs first, lat_resync_sample lat_ours_sample"
                )
        loop = [g for g in loop if g]
        lat = [g for g in lat if g] if args.latency_ms > 0 else []
        print(
            f"emulator pid {emu.pid} on port {emu.port}, root {emu_root} ({fs_type(emu_root)}); "
            f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
            flush=True,
        )
        if loop:
            print(f"[loopback] {args.runs} rounds", flush=True)
            run_rounds(loop, args.runs)
        if lat:
            print(f"[latency {args.latency_ms:g} ms per API request] {args.latency_runs or args.runs} rounds")
            set_latency(ctx, args.latency_ms)
            run_rounds(lat, args.latency_runs or args.runs)
            set_latency(ctx, 0)
        variants = {v.key: v for g in loop + lat for v in g}
        rows = {k: summary(v) for k, v in variants.items()}
        load_end = os.getloadavg()
        result = {
            "bench": "sync",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {
                "python": platform.python_version(),
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
            },
            "tree": {
                "small_files": n_small,
                "small_mib": data["small_bytes"] / MiB,
                "folders": args.folders,
                "size_kib": [args.min_kib, args.max_kib],
                "large_files": args.large_files,
                "large_mib": args.large_mib,
                "sample_files": n_sample,
                "sample_mib": data["sample_bytes"] / MiB,
                "latency_sample_files": n_lat,
                "latency_sample_mib": data["lat_bytes"] / MiB,
                "fs": fs_type(work),
            },
            "concurrency": args.concurrency or 5,
            "latency_ms": args.latency_ms,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "variants": list(rows.values()),
            "samples": {k: [asdict(s) for s in v.samples] for k, v in variants.items()},
            "verdicts": verdicts(rows, variants, args.latency_ms),
            "bench_seconds": time.monotonic() - t_start,
        }
        print(
            f"\ntree: {n_small} small files ({data['small_bytes'] / MiB:.0f} MiB,"
            f" {args.min_kib}-{args.max_kib} KiB,"
            f" {args.folders} folders) + {args.large_files} x {args.large_mib} MiB; sample {n_sample} files"
            f" ({data['sample_bytes'] / MiB:.0f} MiB), latency sample {n_lat} files;"
            f" concurrency {args.concurrency or 5}; medians of"
            f" {args.runs} runs; cpu = client CPU-s, srv = emulator CPU-s, RSS0/peak MiB of the client"
        )
        print_report(result)
        print(
            f"\nload average at start {load_start[0]:.2f} / end {load_end[0]:.2f}; "
            f"bench took {result['bench_seconds']:.0f} s"
        )
        for key in sorted(args.profile):
            prof = work / f"profile-{key}.pstats"
            if prof.exists():
                keep = RESULTS_DIR / f"sync-profile-{key}-{time.strftime('%Y%m%d-%H%M%S')}.pstats"
                RESULTS_DIR.mkdir(exist_ok=True)
                shutil.copy(prof, keep)
                print(f"profile of {key}: {keep} (python -m pstats)")
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"sync-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=1, default=str))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _Current.kill()
        print("interrupted; subprocesses stopped, temp files removed", file=sys.stderr)
        sys.exit(130)
