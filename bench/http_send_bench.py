"""CPU cost of the data path's send loop: CPU-seconds per GiB the client spends PUTting bodies.

A sink server in a child process reads and drops each body; the client (this process) PUTs
``--part-mib`` bodies over keep-alive connections from ``--threads`` threads. Only this process's
CPU time is counted, so the number is the client's cost, not the server's.

    .venv/bin/python bench/http_send_bench.py --gib 4 --part-mib 16
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import threading
import time
from multiprocessing.connection import Connection

from airflow_databricks_transfer.clients.http import HttpPool

MiB = 1 << 20


def _serve_one(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    pending = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in pending:
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
            head, _, rest = pending.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            left = length - len(rest)
            pending = b""
            while left > 0:
                n = conn.recv_into(view[: min(len(view), left)])
                if n == 0:
                    return
                left -= n
            conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "x"\r\n\r\n')


def _sink(port_out: Connection) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port_out.send(srv.getsockname()[1])
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=4.0)
    p.add_argument("--part-mib", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_sink, args=(child,), daemon=True)
    server.start()
    port = parent.recv()
    url = f"http://127.0.0.1:{port}/part"
    body = memoryview(bytearray(args.part_mib * MiB))
    parts = int(args.gib * 1024 / args.part_mib)
    pool = HttpPool()
    counter = iter(range(parts))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            resp = pool.request("PUT", url, {}, body=body)
            resp.read()
            assert resp.status == 200

    cpu0, wall0 = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    gib = parts * args.part_mib / 1024
    pool.close()
    server.terminate()
    print(f"{gib:.2f} GiB in {wall:.2f} s ({gib * 1024 / wall:.0f} MiB/s); client CPU {cpu / gib:.3f} s/GiB")


if __name__ == "__main__":
    main()
