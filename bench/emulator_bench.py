"""Throughput of the Files API emulator against the loopback ceiling, plus its peak RSS and CPU cost.

The emulator runs as a subprocess (the standalone CLI); a lean raw-socket HTTP/1.1 client in this file
uploads the same source file as a multipart upload (presigned part URLs, ``--parallel`` workers, one
keep-alive connection each, bodies sent with sendfile or one sendall) and downloads it back with
parallel ranged GETs. The ceilings are a raw-socket server (a second subprocess, started from this
same file) that receives the same parts sent the same way and discards them or writes them to a file
on the emulator's filesystem, and that serves the same ranges with sendfile. Runs are interleaved.

    bench/run.sh [--size-mib 1024] [--runs 5] [--also-disk] [--compare-splice] ...

Figures are MiB/s (2**20 bytes per second). Results go to stdout and bench/results/emulator-*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import platform
import queue
import shutil
import signal
import socket
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
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

MiB = 1 << 20
GiB = 1 << 30
IO_BUF = 1 << 20
TOKEN = "bench-token"
VOLUME = "main.default.bench"
VOL_PATH = "/Volumes/main/default/bench"
FILES_API = "/api/2.0/fs/files"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- minimal HTTP/1.1
def recv_head(sock: socket.socket) -> bytes:
    """Read exactly one header block (through CRLFCRLF), leaving any body bytes on the socket."""
    head = bytearray()
    while True:
        peeked = sock.recv(65536, socket.MSG_PEEK)
        if not peeked:
            raise ConnectionError("connection closed before a complete header")
        idx = (bytes(head[-3:]) + peeked).find(b"\r\n\r\n")
        take = len(peeked) if idx < 0 else idx + 4 - min(3, len(head))
        while take:
            chunk = sock.recv(take)
            if not chunk:
                raise ConnectionError("connection closed inside a header")
            head += chunk
            take -= len(chunk)
        if idx >= 0:
            return bytes(head)
        if len(head) > 65536:
            raise ConnectionError("header too long")


def parse_head(raw: bytes) -> tuple[str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed inside a body")
        out += chunk
    return bytes(out)


class Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough for part PUTs and ranged GETs."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def _send_head(self, method: str, target: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _response(self) -> tuple[int, dict[str, str]]:
        status_line, headers = parse_head(recv_head(self.sock))
        return int(status_line.split(" ", 2)[1]), headers

    def put(
        self,
        target: str,
        headers: dict[str, str],
        src: BinaryIO,
        *,
        offset: int,
        length: int,
        buf: memoryview | None,
    ) -> dict[str, str]:
        self._send_head("PUT", target, {**headers, "Content-Length": str(length)})
        if buf is None:
            sent = self.sock.sendfile(src, offset, length)
            if sent != length:
                raise OSError(f"sendfile sent {sent} of {length} bytes")
        else:
            got = 0
            while got < length:  # one positional read into the reused buffer, then one sendall
                n = os.preadv(src.fileno(), [buf[got:length]], offset + got)
                if n == 0:
                    raise OSError("source file is shorter than expected")
                got += n
            self.sock.sendall(buf[:length])
        status, resp = self._response()
        body = recv_exact(self.sock, int(resp.get("content-length", "0")))
        if status not in (200, 204):
            raise RuntimeError(f"PUT {target[:80]} answered {status}: {body[:300]!r}")
        return resp

    def get_range(
        self,
        target: str,
        headers: dict[str, str],
        *,
        start: int,
        length: int,
        buf: memoryview,
        out_fd: int | None,
    ) -> None:
        self._send_head("GET", target, {**headers, "Range": f"bytes={start}-{start + length - 1}"})
        status, resp = self._response()
        clen = int(resp.get("content-length", "0"))
        if status != 206 or clen != length:
            body = recv_exact(self.sock, min(clen, 4096))
            raise RuntimeError(f"GET {target[:80]} answered {status} ({clen} bytes): {body[:300]!r}")
        pos, end = start, start + length
        while pos < end:
            n = self.sock.recv_into(buf, min(len(buf), end - pos))
            if n == 0:
                raise ConnectionError("connection closed inside a body")
            if out_fd is not None:
                os.pwrite(out_fd, buf[:n], pos)
            pos += n


# ---------------------------------------------------------------------------- raw ceiling server
def _drain(
    sock: socket.socket, length: int, buf: memoryview, *, fd: int, offset: int | None, use_splice: bool
) -> None:
    """Move ``length`` body bytes from the socket to ``fd`` (at ``offset``, or /dev/null when None)."""
    done = 0
    if use_splice:
        r, w = os.pipe()
        try:
            while done < length:
                n = os.splice(sock.fileno(), w, min(length - done, IO_BUF))
                if n == 0:
                    raise ConnectionError("client closed inside a body")
                out = 0
                while out < n:
                    dst = None if offset is None else offset + done + out
                    out += os.splice(r, fd, n - out, offset_dst=dst)
                done += n
        finally:
            os.close(r)
            os.close(w)
        return
    while done < length:
        n = sock.recv_into(buf, min(len(buf), length - done))
        if n == 0:
            raise ConnectionError("client closed inside a body")
        if offset is not None:
            os.pwrite(fd, buf[:n], offset + done)
        done += n


def _serve_raw(conn: socket.socket, source: str, sink_file: str, use_splice: bool, devnull: int) -> None:
    buf = memoryview(bytearray(IO_BUF))
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                line, headers = parse_head(recv_head(conn))
            except (ConnectionError, OSError):
                return
            method, target, _ = line.split(" ", 2)
            path, _, query = target.partition("?")
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if method == "PUT" and path in ("/sink", "/file"):
                length = int(headers.get("content-length", "0"))
                if path == "/sink":
                    _drain(conn, length, buf, fd=devnull, offset=None, use_splice=use_splice)
                else:
                    offset = int(dict(parse_qsl(query)).get("offset", "0"))
                    fd = os.open(sink_file, os.O_WRONLY | os.O_CREAT, 0o644)
                    try:
                        _drain(conn, length, buf, fd=fd, offset=offset, use_splice=use_splice)
                    finally:
                        os.close(fd)
                conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "raw"\r\nContent-Length: 0\r\n\r\n')
            elif method == "GET" and path == "/source":
                size = os.path.getsize(source)
                start, end, status = 0, size - 1, "200 OK"
                rng = headers.get("range", "")
                if rng.startswith("bytes="):
                    a, _, b = rng[len("bytes=") :].partition("-")
                    start, end, status = (
                        int(a),
                        min(int(b), size - 1) if b else size - 1,
                        "206 Partial Content",
                    )
                n = end - start + 1
                conn.sendall(
                    f"HTTP/1.1 {status}\r\nContent-Length: {n}\r\n"
                    f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
                )
                with open(source, "rb") as f:
                    conn.sendfile(f, start, n)
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return


def raw_server_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emulator_bench.py _raw-server")
    p.add_argument("--source", required=True)
    p.add_argument("--sink-file", required=True)
    p.add_argument("--sink-io", choices=["recv", "splice"], default="recv")
    p.add_argument("--port-file", required=True)
    args = p.parse_args(argv)
    devnull = os.open(os.devnull, os.O_WRONLY)
    srv = socket.create_server((HOST, 0), backlog=128)
    Path(args.port_file).write_text(str(srv.getsockname()[1]))
    use_splice = args.sink_io == "splice" and hasattr(os, "splice")
    while True:
        conn, _ = srv.accept()
        threading.Thread(
            target=_serve_raw, args=(conn, args.source, args.sink_file, use_splice, devnull), daemon=True
        ).start()


# ---------------------------------------------------------------------------- subprocesses and /proc
def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fs_type(path: Path) -> str:
    real, best, kind = os.path.realpath(path), "", "?"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mnt, typ = line.split()[:3]
        mnt = mnt.replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, kind = mnt, typ
    return kind


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A subprocess that writes its port to a file once listening; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], workdir: Path) -> None:
        self.name = name
        self.port_file = workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        self.port_file.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port-file", str(self.port_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches only the bench, which then stops us
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no bench threads run at this point
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + 60
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def json_call(port: int, method: str, target: str, body: Any = None, auth: bool = True) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, target, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {target} answered {resp.status}: {data[:300]!r}")
        return json.loads(data) if data.strip() else {}
    finally:
        conn.close()


# ---------------------------------------------------------------------------- transfers
@dataclass(frozen=True)
class Config:
    source: Path
    size: int
    part: int
    parallel: int
    send: str
    timeout: float

    def chunks(self) -> list[tuple[int, int]]:
        return [(off, min(self.part, self.size - off)) for off in range(0, self.size, self.part)]


Part = tuple[int, str, int, int, dict[str, str]]  # part_number, request target, offset, length, headers


def run_workers(
    cfg: Config, port: int, tasks: list[Any], bufsize: int, work: Callable[[Conn, BinaryIO, Any, Any], None]
) -> None:
    """Spread tasks over ``cfg.parallel`` threads, each with a connection, a source handle and a buffer."""
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for t in tasks:
        todo.put(t)
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            buf = memoryview(bytearray(bufsize)) if bufsize else None
            conn = Conn(HOST, port, cfg.timeout)
            try:
                with open(cfg.source, "rb") as src:
                    while not errors:
                        try:
                            task = todo.get_nowait()
                        except queue.Empty:
                            return
                        work(conn, src, buf, task)
            finally:
                conn.close()
        except BaseException as err:  # noqa: BLE001 - re-raised by the caller
            errors.append(err)

    threads = [threading.Thread(target=runner, daemon=True) for _ in range(min(cfg.parallel, len(tasks)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def put_parts(cfg: Config, port: int, parts: list[Part]) -> dict[int, str]:
    """PUT each part (sendfile, or one sendall of a preadv-filled buffer); returns the ETag of each part."""
    etags: dict[int, str] = {}

    def work(conn: Conn, src: BinaryIO, buf: memoryview | None, part: Part) -> None:
        number, target, offset, length, headers = part
        etags[number] = conn.put(target, headers, src, offset=offset, length=length, buf=buf).get("etag", "")

    run_workers(cfg, port, parts, cfg.part if cfg.send == "sendall" else 0, work)
    return etags


def get_ranges(cfg: Config, port: int, target: str, headers: dict[str, str], out: Path | None) -> None:
    """Ranged GETs of the whole file, read into a reused buffer and discarded or pwritten to ``out``."""
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if out is not None else None

    def work(conn: Conn, _src: BinaryIO, buf: memoryview, task: tuple[int, int]) -> None:
        conn.get_range(target, headers, start=task[0], length=task[1], buf=buf, out_fd=out_fd)

    try:
        run_workers(cfg, port, cfg.chunks(), IO_BUF, work)
    finally:
        if out_fd is not None:
            os.close(out_fd)


def emulator_upload(cfg: Config, port: int, name: str, pid: int) -> dict[str, float]:
    """initiate-upload, create-upload-part-urls, parallel part PUTs, complete-upload; phase times and CPU."""
    path = f"{VOL_PATH}/{name}"
    t0 = time.perf_counter()
    init = json_call(port, "POST", f"{FILES_API}{path}?action=initiate-upload&overwrite=true")
    token = init["multipart_upload"]["session_token"]
    chunks = cfg.chunks()
    body = {"path": path, "session_token": token, "start_part_number": 1, "count": len(chunks)}
    urls = json_call(
        port, "POST", "/api/2.0/fs/create-upload-part-urls", {**body, "expire_time": "2030-01-01T00:00:00Z"}
    )
    parts: list[Part] = []
    for item, (off, length) in zip(urls["upload_part_urls"], chunks, strict=True):
        u = urlsplit(item["url"])
        if u.port != port:
            raise RuntimeError(f"part URL points elsewhere: {item['url']}")
        headers = {h["name"]: h["value"] for h in item.get("headers", [])}
        parts.append((int(item["part_number"]), f"{u.path}?{u.query}", off, length, headers))
    t1, c1 = time.perf_counter(), proc_cpu_s(pid)
    etags = put_parts(cfg, port, parts)
    t2, c2 = time.perf_counter(), proc_cpu_s(pid)
    listed = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
    target = f"{FILES_API}{path}?action=complete-upload&upload_type=multipart&session_token={token}"
    json_call(port, "POST", target, {"parts": listed})
    t3, c3 = time.perf_counter(), proc_cpu_s(pid)
    return {
        "setup_s": t1 - t0,
        "parts_s": t2 - t1,
        "complete_s": t3 - t2,
        "parts_cpu_s": c2 - c1,
        "complete_cpu_s": c3 - c2,
    }


# ---------------------------------------------------------------------------- measurement
@dataclass
class Sample:
    seconds: float
    mibps: float
    server_cpu_s: float
    client_cpu_s: float
    peak_rss_mib: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Variant:
    key: str  # "up_*" or "down_*"; "*emulator*" or a ceiling
    label: str
    run: Callable[[], dict[str, float] | None]
    pid: int  # the server whose CPU (and, for the emulator, RSS) is read
    prepare: Callable[[], None] = lambda: None  # untimed, before each run
    samples: list[Sample] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return "upload" if self.key.startswith("up_") else "download"

    @property
    def role(self) -> str:
        return "emulator" if "emulator" in self.key else "ceiling"


def measure(v: Variant, size: int, can_reset: bool) -> Sample:
    v.prepare()
    os.sync()  # untimed: start every run without dirty pages of the previous ones
    if v.role == "emulator" and can_reset:
        reset_hwm(v.pid)
    c0, p0 = proc_cpu_s(v.pid), time.process_time()
    t0 = time.perf_counter()
    extra = v.run() or {}
    dt = time.perf_counter() - t0
    c1, p1 = proc_cpu_s(v.pid), time.process_time()
    peak = proc_mem_kib(v.pid)["VmHWM"] / 1024 if v.role == "emulator" else None
    return Sample(dt, size / MiB / dt, c1 - c0, p1 - p0, peak, extra)


def summary(v: Variant, size: int) -> dict[str, Any]:
    rates = [s.mibps for s in v.samples]
    gib = size / GiB * len(v.samples)
    out: dict[str, Any] = {
        "label": v.label,
        "direction": v.direction,
        "role": v.role,
        "median_mibps": statistics.median(rates),
        "min_mibps": min(rates),
        "max_mibps": max(rates),
        "median_s": statistics.median(s.seconds for s in v.samples),
        "server_cpu_s_per_gib": sum(s.server_cpu_s for s in v.samples) / gib,
        "client_cpu_s_per_gib": sum(s.client_cpu_s for s in v.samples) / gib,
    }
    peaks = [s.peak_rss_mib for s in v.samples if s.peak_rss_mib is not None]
    if peaks:
        out["peak_rss_mib"] = max(peaks)
    if v.samples[0].extra.get("parts_s"):
        parts = [size / MiB / s.extra["parts_s"] for s in v.samples]
        out["parts_only_median_mibps"] = statistics.median(parts)
        out["parts_only_min_mibps"], out["parts_only_max_mibps"] = min(parts), max(parts)
        out["complete_median_s"] = statistics.median(s.extra["complete_s"] for s in v.samples)
        out["parts_cpu_s_per_gib"] = sum(s.extra["parts_cpu_s"] for s in v.samples) / gib
        out["complete_cpu_s_per_gib"] = sum(s.extra["complete_cpu_s"] for s in v.samples) / gib
    return out


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def curl(args: list[str], url: str, timeout: float) -> dict[str, Any]:
    cmd = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "--max-time",
        str(int(timeout)),
    ]
    res = subprocess.run(
        [*cmd, *args, url], capture_output=True, text=True, timeout=timeout + 10, check=False
    )
    code, _, seconds = res.stdout.strip().partition(" ")
    return {"http_code": int(code or 0), "seconds": float(seconds or 0), "stderr": res.stderr.strip()[:300]}


# ---------------------------------------------------------------------------- one pass (one root fs)
def run_pass(
    name: str, root: Path, args: argparse.Namespace, cfg: Config, *, work: Path, src_sha: str
) -> dict[str, Any]:
    py = sys.executable
    emu_cmd = [py, "-m", "airflow_databricks_transfer.testing.files_api", "--port", "0"]
    emu_cmd += ["--root", str(root / "emu"), "--token", TOKEN, "--volume", VOLUME, "--min-part-size", "1"]
    raw_cmd = [py, str(Path(__file__).resolve()), "_raw-server", "--source", str(cfg.source)]
    raw_cmd += ["--sink-file", str(root / "ceiling-sink.bin"), "--sink-io", args.sink_io]
    with contextlib.ExitStack() as stack:
        emu = Child(f"emulator-{name}", emu_cmd, work)
        stack.callback(emu.stop)
        raw = Child(f"raw-{name}", raw_cmd, work)
        stack.callback(raw.stop)
        try:
            return _run_pass(name, root, args, cfg, src_sha=src_sha, emu=emu, raw=raw)
        except Exception:
            print(
                f"emulator log tail:\n{emu.log_tail()}\nraw server log tail:\n{raw.log_tail()}",
                file=sys.stderr,
            )
            raise


def _run_pass(
    name: str, root: Path, args: argparse.Namespace, cfg: Config, *, src_sha: str, emu: Child, raw: Child
) -> dict[str, Any]:
    size = cfg.size
    auth = {"Authorization": f"Bearer {TOKEN}"}
    emu_file = root / "emu" / VOL_PATH.lstrip("/") / "bench.bin"
    sink_file = root / "ceiling-sink.bin"
    out_path = root / "download.bin" if args.download_to == "file" else None
    can_reset = reset_hwm(emu.pid)
    base_mem, base_fds = proc_mem_kib(emu.pid), fd_count(emu.pid)
    size_checks: list[bool] = []

    def set_splice(on: bool) -> None:
        json_call(emu.port, "PATCH", "/_emulator/settings", {"use_splice": on}, auth=False)

    def emu_up() -> dict[str, float]:
        extra = emulator_upload(cfg, emu.port, "bench.bin", emu.pid)
        size_checks.append(emu_file.stat().st_size == size)  # cheap: only a stat
        return extra

    def emu_prepare(splice: bool) -> Callable[[], None]:
        def prepare() -> None:
            set_splice(splice)
            emu_file.unlink(missing_ok=True)  # drop the old version untimed, as the ceiling sink does

        return prepare

    def sink_up(path: str, offsets: bool) -> Callable[[], None]:
        headers = {"Content-Type": "application/octet-stream"}  # what the emulator's part URLs ask for
        parts: list[Part] = [
            (i + 1, f"{path}?offset={off}" if offsets else f"{path}?n={i + 1}", off, n, headers)
            for i, (off, n) in enumerate(cfg.chunks())
        ]

        def run() -> None:
            put_parts(cfg, raw.port, parts)

        return run

    def unlink(p: Path | None) -> Callable[[], None]:
        def prepare() -> None:
            if p is not None:
                p.unlink(missing_ok=True)

        return prepare

    def download(port: int, target: str, headers: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            get_ranges(cfg, port, target, headers, out_path)

        return run

    target = f"{FILES_API}{VOL_PATH}/bench.bin"
    variants = [
        Variant("up_emulator", "emulator multipart (initiate..complete)", emu_up, emu.pid, emu_prepare(True)),
        Variant("up_ceiling_discard", "ceiling: raw sink, discard", sink_up("/sink", False), raw.pid),
        Variant("up_ceiling_file", "ceiling: raw sink -> file (same fs)", sink_up("/file", True), raw.pid),
    ]
    variants[-1].prepare = unlink(sink_file)
    if args.compare_splice:
        label = "emulator multipart, use_splice=false"
        variants.append(Variant("up_emulator_nosplice", label, emu_up, emu.pid, emu_prepare(False)))
    variants += [
        Variant("down_emulator", "emulator ranged GET", download(emu.port, target, auth), emu.pid),
        Variant("down_ceiling", "ceiling: raw sendfile source", download(raw.port, "/source", {}), raw.pid),
    ]
    for v in variants[-2:]:
        v.prepare = unlink(out_path)
    for v in variants:  # untimed warm-up; it also leaves a file for the first download
        measure(v, size, False)
    size_checks.clear()
    for r in range(args.runs):  # interleaved, with the order reversed every other round
        ups = [v for v in variants if v.direction == "upload"]
        downs = [v for v in variants if v.direction == "download"]
        if r % 2:
            ups.reverse()
            downs.reverse()
        for v in ups + downs:
            s = measure(v, size, can_reset)
            v.samples.append(s)
            print(
                f"  [{name}] run {r + 1}/{args.runs} {v.key:<22} {s.mibps:8.1f} MiB/s {s.seconds:7.3f} s",
                flush=True,
            )
    end_mem, end_fds = proc_mem_kib(emu.pid), fd_count(emu.pid)
    # verification, untimed: a fresh upload with the default settings, then one SHA-256
    set_splice(True)
    emulator_upload(cfg, emu.port, "bench.bin", emu.pid)
    verify: dict[str, Any] = {
        "sizes_ok": bool(size_checks) and all(size_checks),
        "uploads_size_checked": len(size_checks),
        "sha256_ok": sha256(emu_file) == src_sha,
    }
    if out_path is not None:
        get_ranges(cfg, emu.port, target, auth, out_path)
        verify["download_sha256_ok"] = sha256(out_path) == src_sha
        out_path.unlink()
    sink_file.unlink(missing_ok=True)
    curl_res = run_curl(args, cfg, emu, raw, root) if args.curl and shutil.which("curl") else None
    return {
        "root": str(root),
        "fs": fs_type(root),
        "variants": {v.key: {**summary(v, size), "runs": [asdict(s) for s in v.samples]} for v in variants},
        "emulator": {
            "hwm_reset_per_run": can_reset,
            "baseline_rss_mib": base_mem["VmRSS"] / 1024,
            "end_rss_mib": end_mem["VmRSS"] / 1024,
            "cumulative_hwm_mib": end_mem["VmHWM"] / 1024,
            "open_fds_start": base_fds,
            "open_fds_end": end_fds,
        },
        "verify": verify,
        "curl": curl_res,
    }


def run_curl(args: argparse.Namespace, cfg: Config, emu: Child, raw: Child, root: Path) -> dict[str, Any]:
    """One single-stream curl PUT and GET against the emulator and against the raw server."""
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    put = ["-H", "Expect:", "-H", "Content-Type: application/octet-stream", "-T", str(cfg.source)]
    emu_url = f"http://{HOST}:{emu.port}{FILES_API}{VOL_PATH}/curl.bin"
    raw_url = f"http://{HOST}:{raw.port}"
    res = {
        "put_emulator": curl([*auth, *put], emu_url + "?overwrite=true", args.timeout_s),
        "get_emulator": curl(auth, emu_url, args.timeout_s),
        "put_raw_sink": curl(put, raw_url + "/sink", args.timeout_s),
        "get_raw_source": curl([], raw_url + "/source", args.timeout_s),
    }
    curl_file = root / "emu" / VOL_PATH.lstrip("/") / "curl.bin"
    res["put_emulator"]["size_ok"] = curl_file.exists() and curl_file.stat().st_size == cfg.size
    curl_file.unlink(missing_ok=True)
    for r in res.values():
        r["mibps"] = cfg.size / MiB / r["seconds"] if r["seconds"] else None
    return res


# ---------------------------------------------------------------------------- report
def print_report(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"\nEmulator bench: {c['size_mib']} MiB, parts {c['part_mib']} MiB, parallel {c['parallel']}, "
        f"runs {c['runs']}, send={c['send']}, download-to={c['download_to']}, sink-io={c['sink_io']}; "
        f"{result['env']['cpus']} CPUs, kernel {result['env']['kernel']}. Rates in MiB/s."
    )
    for name, p in result["passes"].items():
        e = p["emulator"]
        print(f"\n[{name}] root {p['root']} ({p['fs']})")
        print(
            f"  {'dir':<8} {'variant':<40} {'median':>8} {'min-max':>17} {'s':>6} "
            f"{'srvCPU':>7} {'cliCPU':>7} {'RSS':>6}"
        )
        for v in p["variants"].values():
            rss = f"{v['peak_rss_mib']:6.1f}" if "peak_rss_mib" in v else f"{'-':>6}"
            print(
                f"  {v['direction']:<8} {v['label']:<40} {v['median_mibps']:8.1f} "
                f"{v['min_mibps']:8.1f}-{v['max_mibps']:<8.1f} {v['median_s']:6.3f} "
                f"{v['server_cpu_s_per_gib']:7.2f} {v['client_cpu_s_per_gib']:7.2f} {rss}"
            )
            if "parts_only_median_mibps" in v:
                print(
                    f"  {'':<8} {'  part PUTs only':<40} {v['parts_only_median_mibps']:8.1f} "
                    f"{v['parts_only_min_mibps']:8.1f}-{v['parts_only_max_mibps']:<8.1f} {'':>6} "
                    f"{v['parts_cpu_s_per_gib']:7.2f}\n"
                    f"  {'':<8} {'  complete-upload (joins the parts)':<40} {'':>26} "
                    f"{v['complete_median_s']:6.3f} {v['complete_cpu_s_per_gib']:7.2f}"
                )
        print(
            "  (s = median seconds per run; CPU = CPU-seconds per GiB moved, server and bench client; "
            "RSS = emulator peak RSS MiB)"
        )
        r = p["ratios"]
        print(
            f"  ratios (median/median): upload e2e vs discard {r['upload_vs_discard']:.2f}, "
            f"vs file {r['upload_vs_file']:.2f}; part PUTs vs discard {r['parts_vs_discard']:.2f}, "
            f"vs file {r['parts_vs_file']:.2f}; download {r['download']:.2f}"
            + (
                f"; no-splice/splice upload {r['nosplice_vs_splice']:.2f}"
                if "nosplice_vs_splice" in r
                else ""
            )
        )
        print(
            f"  emulator RSS: baseline {e['baseline_rss_mib']:.1f} MiB, end {e['end_rss_mib']:.1f} MiB, "
            f"peak {e['cumulative_hwm_mib']:.1f} MiB"
            + (
                " (per-run peaks in the table, VmHWM reset each run)"
                if e["hwm_reset_per_run"]
                else " (cumulative)"
            )
            + f"; open fds {e['open_fds_start']} -> {e['open_fds_end']}"
        )
        ver = p["verify"]
        print(f"  verify: {ver}")
        if p["curl"]:
            cr = p["curl"]
            print(
                "  curl single stream: "
                + ", ".join(f"{k} {v['mibps'] or 0:.1f} MiB/s (HTTP {v['http_code']})" for k, v in cr.items())
            )


def ratios(p: dict[str, Any]) -> dict[str, float]:
    v = p["variants"]
    up, disc, fil = v["up_emulator"], v["up_ceiling_discard"], v["up_ceiling_file"]
    out = {
        "upload_vs_discard": up["median_mibps"] / disc["median_mibps"],
        "upload_vs_file": up["median_mibps"] / fil["median_mibps"],
        "parts_vs_discard": up["parts_only_median_mibps"] / disc["median_mibps"],
        "parts_vs_file": up["parts_only_median_mibps"] / fil["median_mibps"],
        "download": v["down_emulator"]["median_mibps"] / v["down_ceiling"]["median_mibps"],
    }
    if "up_emulator_nosplice" in v:
        out["nosplice_vs_splice"] = v["up_emulator_nosplice"]["median_mibps"] / up["median_mibps"]
    return out


# ---------------------------------------------------------------------------- main
def make_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes, then read them back once (page cache) and return their SHA-256."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return sha256(path)


def default_tmp() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the transferred file (default 1024)")
    p.add_argument("--part-mib", type=int, default=64, help="part / range size (default 64)")
    p.add_argument("--parallel", type=int, default=4, help="concurrent connections (default 4)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--root-dir", type=Path, help="where the emulator root goes (default /dev/shm, else /tmp)")
    p.add_argument("--also-disk", action="store_true", help="repeat everything with a disk-backed root")
    p.add_argument("--disk-dir", type=Path, default=Path("/var/tmp"), help="disk-backed dir for --also-disk")
    p.add_argument("--send", choices=["sendfile", "sendall"], default="sendfile", help="how parts are sent")
    p.add_argument("--download-to", choices=["devnull", "file"], default="devnull")
    p.add_argument("--sink-io", choices=["recv", "splice"], default="recv", help="how the raw sink drains")
    p.add_argument(
        "--compare-splice", action="store_true", help="also time the emulator with use_splice=false"
    )
    p.add_argument("--no-curl", dest="curl", action="store_false", help="skip the curl reference")
    p.add_argument("--timeout-s", type=float, default=1800, help="give up after this many seconds")
    return p


class BenchTimeout(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_raw-server"]:
        return raw_server_main(argv[1:])
    args = build_parser().parse_args(argv)
    if min(args.size_mib, args.part_mib, args.parallel, args.runs) < 1:
        raise SystemExit("sizes, parallelism and runs must be >= 1")
    size = args.size_mib * MiB

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchTimeout(f"bench exceeded --timeout-s {args.timeout_s}")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.timeout_s))
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="emu-bench-", dir=default_tmp()))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        roots = {"main": Path(tempfile.mkdtemp(prefix="emu-bench-root-", dir=args.root_dir or default_tmp()))}
        stack.callback(shutil.rmtree, roots["main"], ignore_errors=True)
        if args.also_disk:
            disk_dir = args.disk_dir if args.disk_dir.is_dir() else Path("/tmp")
            if fs_type(disk_dir) in ("tmpfs", "ramfs"):
                print(f"warning: {disk_dir} is {fs_type(disk_dir)}, not disk-backed", file=sys.stderr)
            roots["disk"] = Path(tempfile.mkdtemp(prefix="emu-bench-root-", dir=disk_dir))
            stack.callback(shutil.rmtree, roots["disk"], ignore_errors=True)
        need: dict[int, int] = {}  # bytes needed per filesystem: source, and ~4 copies per root at peak
        for d, n in [(work, size), *((r, 4 * size) for r in roots.values())]:
            need[d.stat().st_dev] = need.get(d.stat().st_dev, 0) + n
        for d in {work, *roots.values()}:
            if shutil.disk_usage(d).free < need[d.stat().st_dev]:
                raise SystemExit(f"{d}: needs {need[d.stat().st_dev] // MiB} MiB free")
        cfg = Config(work / "source.bin", size, args.part_mib * MiB, args.parallel, args.send, 120.0)
        print(f"writing {args.size_mib} MiB source to {cfg.source} ...", flush=True)
        src_sha = make_source(cfg.source, size)
        result: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "env": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "source_fs": fs_type(work),
                "source_sha256": src_sha,
            },
            "passes": {},
        }
        for name, root in roots.items():
            print(f"pass {name}: root {root} ({fs_type(root)})", flush=True)
            p = run_pass(name, root, args, cfg, work=work, src_sha=src_sha)
            p["ratios"] = ratios(p)
            result["passes"][name] = p
        signal.alarm(0)
        print_report(result)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"emulator-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp files removed", file=sys.stderr)
        sys.exit(130)
