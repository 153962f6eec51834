"""A loopback TCP proxy that breaks connections on purpose, for servers we cannot inject faults into.

Azurite has no fault hooks, and neither toxiproxy nor tc netem is available on the test machines, so
Azure clients are tested through this proxy: a rule from the shared fault model (``faults.py``) is
matched once per new connection (route ``"tcp"``; ``nth`` is the n-th new connection, ``times`` how many
connections it spoils) and then cuts a byte stream after N bytes with FIN or RST, pauses it, or resets
the connection the moment it is accepted. Byte counts are per connection, not per HTTP request, since
keep-alive connections carry many requests; tests that want one request per connection use a fresh
client or ``Connection: close``.

A rule's effects, all counted in ``direction`` (``server_to_client`` by default):

* ``cut_after_bytes=N``: forward exactly N bytes, then close both ends with ``cut_with`` (``"fin"``: the
  client reads a clean end of stream; ``"rst"``: it gets a connection reset);
* ``stall_after_bytes=N, delay_s=S``: forward N bytes, then hold that stream for S seconds (or until
  ``release_stalls()``); ``delay_s`` alone holds it before its first byte. A stall before a cut point
  delays the cut;
* ``refuse=True``: accept, then reset at once (clients see ECONNRESET from connect, send or recv).
"""

from __future__ import annotations

import contextlib
import fnmatch
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from airflow_databricks_transfer.testing.faults import TCP_ROUTE, Direction, FaultPlan, FaultRule, RequestInfo

Outcome = Literal["open", "closed", "cut", "refused", "upstream_failed", "reset", "stopped"]

_BUF = 64 * 1024
_TCP_REQUEST = RequestInfo(route=TCP_ROUTE, method="TCP")
_HTTP_ONLY: tuple[tuple[str, Any], ...] = (
    ("status", None),
    ("error_code", None),
    ("message", None),
    ("body", None),
    ("retry_after_s", None),
    ("expire", False),
    ("phase", "before"),
    ("part_number", None),
    ("path", "*"),
    ("method", "*"),
)


def check_tcp_rule(rule: FaultRule) -> None:
    """Refuse rules the proxy cannot honour, so a test never passes because its fault silently did nothing."""
    if not fnmatch.fnmatchcase(TCP_ROUTE, rule.route):
        raise ValueError(
            f"the fault proxy matches route {TCP_ROUTE!r}; rule route {rule.route!r} never fires"
        )
    wrong = [name for name, default in _HTTP_ONLY if getattr(rule, name) != default]
    if wrong:
        raise ValueError(
            f"the fault proxy works on bytes, not HTTP requests; unsupported rule fields: {wrong}"
        )
    if (
        rule.cut_after_bytes is None
        and rule.stall_after_bytes is None
        and not rule.refuse
        and rule.delay_s <= 0
    ):
        raise ValueError(
            "a proxy rule needs cut_after_bytes, stall_after_bytes with delay_s, delay_s or refuse"
        )


@dataclass(frozen=True)
class ConnectionRecord:
    """One accepted connection as the proxy saw it (bytes are those forwarded, per direction)."""

    index: int
    rule_id: str | None
    outcome: Outcome
    bytes_client_to_server: int
    bytes_server_to_client: int
    stalled: bool


@dataclass(frozen=True)
class ProxyStats:
    connections: int
    refused: int
    cuts: int
    stalls: int
    stalling_now: int
    bytes_client_to_server: int
    bytes_server_to_client: int


class _Link:
    """A client connection and its upstream twin, pumped by two threads (one per direction)."""

    def __init__(self, proxy: FaultProxy, index: int, client: socket.socket, rule: FaultRule | None) -> None:
        self.proxy = proxy
        self.index = index
        self.client = client
        self.upstream: socket.socket | None = None
        self.rule = rule
        self.lock = threading.Lock()
        self.closed = False
        self.outcome: Outcome = "open"
        self.sent: dict[Direction, int] = {"client_to_server": 0, "server_to_client": 0}
        self.stalled = False
        self.stalling = False
        self.wake = threading.Event()
        self._pumps_left = 2

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        rule = self.rule
        if rule is not None and rule.refuse:
            self.teardown("rst", "refused")
            return
        try:
            upstream = socket.create_connection(self.proxy.upstream, timeout=self.proxy.connect_timeout)
        except OSError:
            self.teardown("rst", "upstream_failed")
            return
        upstream.settimeout(None)
        for sock in (self.client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            if self.closed:  # the proxy stopped while we were connecting
                upstream.close()
                return
            self.upstream = upstream
        up = threading.Thread(
            target=self.pump,
            args=("client_to_server", self.client, upstream),
            name=f"faultproxy-{self.index}-up",
            daemon=True,
        )
        up.start()
        self.pump("server_to_client", upstream, self.client)
        up.join()

    def teardown(self, how: Literal["fin", "rst"], outcome: Outcome) -> None:
        """Close both sockets; shutdown first so the other pump's blocked recv wakes up at once.

        For RST only the read side is shut down (that sends nothing), so the peer sees the reset and not
        a FIN before it.
        """
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.outcome = outcome
            socks = [s for s in (self.client, self.upstream) if s is not None]
        self.wake.set()
        for sock in socks:
            with contextlib.suppress(OSError):
                if how == "rst":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    # ------------------------------------------------------------------ pumping
    def pump(self, direction: Direction, src: socket.socket, dst: socket.socket) -> None:
        rule = self.rule if self.rule is not None and self.rule.direction == direction else None
        cut_at = rule.cut_after_bytes if rule is not None else None
        stall_at: int | None = None
        if rule is not None and rule.delay_s > 0:
            # delay_s alone pauses the stream before its first byte
            stall_at = rule.stall_after_bytes if rule.stall_after_bytes is not None else 0
        sent = 0
        try:
            while True:
                data = src.recv(_BUF)
                if not data:
                    # pass the half-close on, as a plain TCP hop would; but not once torn down, or an
                    # RST cut would reach the client as a FIN first (recv wakes on our own shutdown)
                    with self.lock, contextlib.suppress(OSError):
                        if not self.closed:
                            dst.shutdown(socket.SHUT_WR)
                    break
                view = memoryview(data)
                while view:
                    upto = len(view)
                    if stall_at is not None:
                        upto = min(upto, stall_at - sent)
                    if cut_at is not None:
                        upto = min(upto, cut_at - sent)
                    if upto > 0:
                        dst.sendall(view[:upto])
                        sent += upto
                        view = view[upto:]
                        self.proxy._count(self, direction, upto)
                    if stall_at is not None and sent >= stall_at:
                        assert rule is not None
                        stall_at = None
                        self._stall(rule.delay_s)
                        if self.closed:
                            return
                    if cut_at is not None and sent >= cut_at:
                        assert rule is not None
                        self.teardown(rule.cut_with, "cut")
                        return
        except OSError:
            self.teardown("rst", "reset")
            return
        finally:
            self._pump_done()

    def _stall(self, seconds: float) -> None:
        with self.lock:
            self.stalled = self.stalling = True
        try:
            self.wake.wait(seconds)
        finally:
            with self.lock:
                self.stalling = False

    def _pump_done(self) -> None:
        with self.lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:
            self.teardown("fin", "closed")

    def record(self) -> ConnectionRecord:
        with self.lock:
            return ConnectionRecord(
                index=self.index,
                rule_id=self.rule.id if self.rule is not None else None,
                outcome=self.outcome,
                bytes_client_to_server=self.sent["client_to_server"],
                bytes_server_to_client=self.sent["server_to_client"],
                stalled=self.stalled,
            )


class FaultProxy:
    """Threaded TCP proxy on ``host:0`` in front of ``upstream``; rules can change while it runs.

    Use as a context manager. Point a client at ``proxy.port`` instead of the server's port; each new
    connection is checked against the plan once, when it is accepted.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        rules: Iterable[FaultRule] = (),
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 10.0,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self.connect_timeout = connect_timeout
        self.plan = FaultPlan()
        for rule in rules:
            self.add_rule(rule)
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._bytes: dict[Direction, int] = {"client_to_server": 0, "server_to_client": 0}
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._port = 0

    # ------------------------------------------------------------------ rules
    def add_rule(self, rule: FaultRule) -> FaultRule:
        check_tcp_rule(rule)
        return self.plan.add(rule)

    def remove_rule(self, rule_id: str) -> bool:
        return self.plan.remove(rule_id)

    def clear_rules(self) -> None:
        self.plan.clear()

    def rules(self) -> list[dict[str, Any]]:
        return self.plan.snapshot()

    def release_stalls(self) -> None:
        """End every stall in progress now, so a test need not wait out a long delay_s."""
        with self._lock:
            links = list(self._links)
        for link in links:
            if link.stalling:
                link.wake.set()

    # ------------------------------------------------------------------ observation
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fault proxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            links = list(self._links)
        return [link.record() for link in links]

    def stats(self) -> ProxyStats:
        records = self.connections()
        with self._lock:
            up, down = self._bytes["client_to_server"], self._bytes["server_to_client"]
            stalling = sum(1 for link in self._links if link.stalling)
        return ProxyStats(
            connections=len(records),
            refused=sum(1 for r in records if r.outcome == "refused"),
            cuts=sum(1 for r in records if r.outcome == "cut"),
            stalls=sum(1 for r in records if r.stalled),
            stalling_now=stalling,
            bytes_client_to_server=up,
            bytes_server_to_client=down,
        )

    def _count(self, link: _Link, direction: Direction, n: int) -> None:
        with self._lock:
            self._bytes[direction] += n
            link.sent[direction] += n

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("the fault proxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener shut down by close()
            rule = self.plan.check(_TCP_REQUEST)
            with self._lock:
                link = _Link(self, len(self._links) + 1, client, rule)
                self._links.append(link)
                thread = threading.Thread(target=link.run, name=f"faultproxy-{link.index}", daemon=True)
                self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=10)
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.teardown("fin", "stopped")
        for thread in threads:
            thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
