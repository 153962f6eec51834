"""What checkpoints cost: chunk durability (fdatasync before a checkpoint names chunks) and write rate.

The Files API emulator runs as a subprocess (root on /dev/shm, multipart part bodies discarded, so the
server is not what limits a client); the engine runs in this process and its CPU is read with getrusage
(all threads) around each transfer. Downloads go to tmpfs (/dev/shm) and to ext4 (--ext4-dir, default a
temp dir under /tmp; checked with /proc/mounts), with SHA-256 off so the checkpoint path is not hidden
behind hashing. Checkpoints go to an Airflow-like sink: it serialises what TaskCheckpointStore would send
(state-store values and the XCom progress view) and sleeps 6 ms per write (a state-store set and an XCom
push through the API server cost about 5-7 ms), counting the API calls it stands for.

Variants, interleaved in rotating order, one untimed warm-up each:

    none           no checkpoint sink (NullSink), no durability: the baseline
    before         sink, checkpoint_interval_s=0 (a write per finished chunk, as before), no durability
    before+durable sink, interval 0, durable_checkpoints=True: an fdatasync before every write (worst case)
    after-nodur    sink, interval 1 s (the new default), no durability
    after          sink, interval 1 s, durable (the new defaults)

plus uploads (from tmpfs) with no sink, interval 0 and interval 1 s (calls per GiB only; uploads make
nothing durable locally: the server's answer is the durability).

    bench/run.sh checkpoint [--size-mib 1024] [--chunk-mib 8] [--runs 3] [--parallelism 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator_bench import RESULTS_DIR, TOKEN, VOL_PATH, VOLUME, Child, GiB, MiB, fs_type, json_call

from airflow_databricks_transfer.engine import download as download_mod
from airflow_databricks_transfer.engine.checkpoint import DownloadCheckpoint, UploadCheckpoint
from airflow_databricks_transfer.engine.download import Downloader, DownloadOptions
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions

SINK_WRITE_S = 0.006


class AirflowLikeSink:
    """Stands in for TaskCheckpointStore: same payloads serialised, 6 ms per write, calls counted.

    ``burn``: spend the 6 ms on the CPU holding the GIL instead of sleeping, as the in-process
    execution API of ``airflow dags test`` does (where the issue measured a 23-33% cost).
    """

    def __init__(self, burn: bool = False) -> None:
        self.writes = 0
        self.calls = 0
        self.burn = burn

    def save(self, checkpoint: DownloadCheckpoint | UploadCheckpoint, changed: frozenset[int]) -> None:
        if isinstance(checkpoint, UploadCheckpoint):
            segments = sorted(changed) or range(checkpoint.segment_count)
            values: list[Any] = [checkpoint.segment_record(i) for i in segments]
            values.append(checkpoint.head_record())
        else:
            values = [checkpoint.to_dict()]
        json.dumps(values)
        json.dumps(checkpoint.progress_view())  # the XCom mirror
        if self.burn:
            end = time.thread_time() + SINK_WRITE_S
            while time.thread_time() < end:
                pass
        else:
            time.sleep(SINK_WRITE_S)
        self.writes += 1
        self.calls += len(values) + 1

    def clear(self) -> None:
        pass


class SyncCounter:
    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._real = download_mod.make_durable

    def __call__(self, fd: int) -> None:
        t0 = time.perf_counter()
        self._real(fd)
        self.seconds += time.perf_counter() - t0
        self.calls += 1


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_client(port: int) -> Any:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    from airflow_databricks_transfer.clients.files_api import FilesApiClient

    return FilesApiClient(WorkspaceClient(config=Config(host=f"http://127.0.0.1:{port}", token=TOKEN)))


DOWNLOAD_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"sink": False, "checkpoint_interval_s": 0.0, "durable_checkpoints": False},
    "before": {"sink": True, "checkpoint_interval_s": 0.0, "durable_checkpoints": False},
    "before+durable": {"sink": True, "checkpoint_interval_s": 0.0, "durable_checkpoints": True},
    "after-nodur": {"sink": True, "checkpoint_interval_s": 1.0, "durable_checkpoints": False},
    "after": {"sink": True, "checkpoint_interval_s": 1.0, "durable_checkpoints": True},
}
UPLOAD_VARIANTS: dict[str, dict[str, Any]] = {
    "up-none": {"sink": False, "checkpoint_interval_s": 0.0},
    "up-before": {"sink": True, "checkpoint_interval_s": 0.0},
    "up-after": {"sink": True, "checkpoint_interval_s": 1.0},
}


def one_run(
    kind: str, variant: dict[str, Any], client: Any, args: argparse.Namespace, where: Path, source: Path
) -> dict[str, float]:
    sink = AirflowLikeSink(args.sink_burn) if variant["sink"] else None
    counter = SyncCounter()
    download_mod.make_durable = counter
    os.sync()  # start every run without the previous run's dirty pages
    try:
        if kind == "download":
            out = where / "out.bin"
            opts = DownloadOptions(
                chunk_size_bytes=args.chunk_mib * MiB,
                parallelism=args.parallelism,
                compute_sha256=False,
                checkpoint_interval_s=variant["checkpoint_interval_s"],
                durable_checkpoints=variant["durable_checkpoints"],
            )
            run: Callable[[], Any] = Downloader(
                client.download_source(f"{VOL_PATH}/ckpt-src.bin"), out, opts, sink=sink
            ).run
        else:
            up = UploadOptions(
                part_size_bytes=args.chunk_mib * MiB,
                parallelism=args.parallelism,
                checkpoint_interval_s=variant["checkpoint_interval_s"],
            )
            run = Uploader(client.upload_target(f"{VOL_PATH}/ckpt-up.bin"), source, up, sink=sink).run
        c0, t0 = cpu_s(), time.perf_counter()
        run()
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    finally:
        download_mod.make_durable = counter._real
        if kind == "download":
            (where / "out.bin").unlink(missing_ok=True)
    gib = args.size_mib * MiB / GiB
    return {
        "wall_s": wall,
        "cpu_s_per_gib": cpu / gib,
        "mib_s": args.size_mib / wall,
        "writes_per_gib": (sink.writes if sink else 0) / gib,
        "calls_per_gib": (sink.calls if sink else 0) / gib,
        "fdatasync_per_gib": counter.calls / gib,
        "fdatasync_s_per_gib": counter.seconds / gib,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--chunk-mib", type=int, default=8, help="download chunk and upload part size")
    p.add_argument("--parallelism", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ext4-dir", type=Path, default=Path("/tmp"))
    p.add_argument("--no-upload", action="store_true")
    p.add_argument("--fs", default="tmpfs,ext4", help="download targets: tmpfs, ext4 or both")
    p.add_argument("--sink-burn", action="store_true", help="the sink's 6 ms are CPU (GIL held), not sleep")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir="/dev/shm"))
    ext4 = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.ext4_dir))
    targets = {"tmpfs": work / "dest", "ext4": ext4}
    targets["tmpfs"].mkdir()
    emu = None
    try:
        emu = Child(
            "emulator",
            [
                sys.executable,
                "-m",
                "airflow_databricks_transfer.testing.files_api",
                "--root",
                str(work / "root"),
                "--token",
                TOKEN,
                "--volume",
                VOLUME,
                "--discard-part-bodies",
            ],
            work,
        )
        size = args.size_mib * MiB
        json_call(
            emu.port,
            "POST",
            "/_emulator/seed",
            {"files": [{"path": f"{VOL_PATH}/ckpt-src.bin", "size": size}]},
        )
        source = work / "up-src.bin"
        with open(source, "wb") as f:
            rng = random.Random(1)
            for _ in range(args.size_mib // 8):
                f.write(rng.randbytes(8 * MiB))
        client = make_client(emu.port)
        jobs: list[tuple[str, str, str, dict[str, Any], Path]] = [
            (f"download->{fs} {name}", "download", name, v, dest)
            for fs, dest in targets.items()
            if fs in args.fs.split(",")
            for name, v in DOWNLOAD_VARIANTS.items()
        ]
        if not args.no_upload:
            jobs += [(f"upload<-tmpfs {n}", "upload", n, v, work) for n, v in UPLOAD_VARIANTS.items()]
        print(
            f"fs: {work} {fs_type(work)}, {ext4} {fs_type(ext4)}; {args.size_mib} MiB, "
            f"{args.chunk_mib} MiB chunks/parts, parallelism {args.parallelism}, {args.runs} runs, "
            f"sink {'burns' if args.sink_burn else 'sleeps'} {SINK_WRITE_S * 1000:.0f} ms per write",
            flush=True,
        )
        for _label, kind, _n, v, dest in jobs:  # warm-up
            one_run(kind, v, client, args, dest, source)
        samples: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in jobs}
        for r in range(args.runs):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]
            if r % 2:
                order.reverse()
            for label, kind, _n, v, dest in order:
                samples[label].append(one_run(kind, v, client, args, dest, source))
            print(f"round {r + 1}/{args.runs} done", flush=True)
        report = {
            label: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
            for label, runs in samples.items()
        }
        print_report(report)
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"checkpoint-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples, "medians": report},
                indent=1,
            )
        )
        print(f"results: {out}")
    finally:
        if emu is not None:
            emu.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ext4, ignore_errors=True)
    return 0


def print_report(report: dict[str, dict[str, float]]) -> None:
    print(
        f"{'variant':34} {'MiB/s':>7} {'wall':>6} {'CPU-s/GiB':>9} {'xCPU':>5} {'xwall':>5} "
        f"{'writes/GiB':>10} {'calls/GiB':>9} {'fdatasync/GiB':>13} {'in it s/GiB':>11}"
    )
    for label, m in report.items():
        prefix = label.rsplit(" ", 1)[0]
        base = report.get(f"{prefix} none") or report.get(f"{prefix} up-none") or m
        print(
            f"{label:34} {m['mib_s']:7.0f} {m['wall_s']:6.2f} {m['cpu_s_per_gib']:9.2f} "
            f"{m['cpu_s_per_gib'] / base['cpu_s_per_gib']:5.2f} {m['wall_s'] / base['wall_s']:5.2f} "
            f"{m['writes_per_gib']:10.1f} {m['calls_per_gib']:9.1f} {m['fdatasync_per_gib']:13.1f} "
            f"{m['fdatasync_s_per_gib']:11.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
