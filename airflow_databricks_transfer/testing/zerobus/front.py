"""A loopback TCP front for the gRPC server, so a fault can reset one stream's connection.

grpcio has no server-side call to cut a client's connection, and "the connection dropped" is what a
client meets in production (load balancer restarts, network blips). The front forwards each accepted
connection to the gRPC server's private port and remembers it by the port the gRPC server sees as the
peer, so ``drop(context.peer())`` can send that client an RST. With ``connection_per_stream`` (the SDK's
default) a connection carries one stream.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_CHUNK = 256 * 1024


class TcpFront:
    def __init__(self, host: str, port: int, backend_port: int) -> None:
        self._backend = ("127.0.0.1", backend_port)
        self._sock = socket.create_server((host, port), backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="zerobus-front", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                backend = socket.create_connection(self._backend)
            except OSError:
                client.close()
                continue
            for s in (client, backend):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = backend.getsockname()[1]
            with self._lock:
                if self._closed:
                    client.close()
                    backend.close()
                    return
                self._conns[key] = (client, backend)
            for src, dst in ((client, backend), (backend, client)):
                threading.Thread(target=self._pump, args=(key, src, dst), daemon=True).start()

    def _pump(self, key: int, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(key, reset=False)

    def _close(self, key: int, *, reset: bool) -> bool:
        with self._lock:
            pair = self._conns.pop(key, None)
        if pair is None:
            return False
        client, backend = pair
        if reset:  # linger 0: close() sends RST, as a crashed peer or a middlebox would
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for s in (client, backend):
            # SHUT_RD wakes the pump blocked in recv() without sending a FIN ahead of the RST
            how = socket.SHUT_RD if reset and s is client else socket.SHUT_RDWR
            with contextlib.suppress(OSError):
                s.shutdown(how)
            s.close()
        return True

    def drop(self, peer: str) -> bool:
        """Reset the client connection whose gRPC peer string (``ipv4:127.0.0.1:PORT``) is ``peer``."""
        try:
            key = int(peer.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return False
        return self._close(key, reset=True)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            keys = list(self._conns)
        with contextlib.suppress(OSError):
            self._sock.close()
        for key in keys:
            self._close(key, reset=False)
