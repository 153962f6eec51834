"""A declarative fault plan shared by the emulators.

A rule matches requests by route name, method, path glob and part number, fires on the n-th matching
request for ``times`` requests, and says what goes wrong: an error status (with Retry-After), a cut
connection after N body bytes, a delay, or an expired presigned URL. ``phase="after"`` applies the
request's state change first and then fails, which is how a client learns that "the server got it but
I never heard back" must be survivable.

The loopback TCP fault proxy (``faultproxy.py``) reads the same rules, matched once per new connection
(route ``"tcp"``): ``cut_after_bytes`` and ``stall_after_bytes`` count bytes in ``direction``, ``cut_with``
says how the cut looks to the client (FIN or RST), and ``refuse`` resets a connection as soon as it is
accepted. The HTTP emulators ignore those proxy-only fields.

The Zerobus gRPC emulator (``testing/zerobus``) matches routes ``zerobus.create`` (stream creation),
``zerobus.ingest`` (each ingest request, ``path`` = the table name) and ``zerobus.token`` (the OAuth
endpoint). On a gRPC route ``grpc_code`` ends the stream with that status, ``drop`` resets its TCP
connection, and ``delay_s`` alone holds the stream's acknowledgements (a stall).
"""

from __future__ import annotations

import fnmatch
import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Phase = Literal["before", "after"]
Direction = Literal["server_to_client", "client_to_server"]
CutWith = Literal["fin", "rst"]

TCP_ROUTE = "tcp"

# gRPC status names a rule may end a stream with (grpc.StatusCode members other than OK)
GRPC_CODES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)

_ids = itertools.count(1)


@dataclass(frozen=True)
class RequestInfo:
    """What a fault rule can match on. ``path`` is the decoded volume path when the request has one."""

    route: str
    method: str
    path: str = ""
    part_number: int | None = None


@dataclass(frozen=True)
class FaultRule:
    route: str = "*"
    method: str = "*"
    path: str = "*"
    part_number: int | None = None
    nth: int = 1
    times: int | None = 1
    status: int | None = None
    error_code: str | None = None
    message: str | None = None
    body: str | None = None
    retry_after_s: float | None = None
    cut_after_bytes: int | None = None
    delay_s: float = 0.0
    expire: bool = False
    phase: Phase = "before"
    # proxy-only (route "tcp"): which byte stream the byte counts apply to, how a cut ends, a stall
    # point (the stream pauses there for delay_s), and refusing the connection outright
    direction: Direction = "server_to_client"
    cut_with: CutWith = "fin"
    stall_after_bytes: int | None = None
    refuse: bool = False
    # gRPC emulators: end the stream with this status name (e.g. "UNAVAILABLE"), or reset its connection
    grpc_code: str | None = None
    drop: bool = False
    id: str = field(default="")

    def __post_init__(self) -> None:
        if self.nth < 1:
            raise ValueError("nth counts from 1")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or None (forever)")
        if self.phase not in ("before", "after"):
            raise ValueError("phase must be 'before' or 'after'")
        if self.cut_after_bytes is not None and self.cut_after_bytes < 0:
            raise ValueError("cut_after_bytes must be >= 0")
        if self.direction not in ("server_to_client", "client_to_server"):
            raise ValueError("direction must be 'server_to_client' or 'client_to_server'")
        if self.cut_with not in ("fin", "rst"):
            raise ValueError("cut_with must be 'fin' or 'rst'")
        if self.stall_after_bytes is not None:
            if self.stall_after_bytes < 0:
                raise ValueError("stall_after_bytes must be >= 0")
            if self.delay_s <= 0:
                raise ValueError("stall_after_bytes needs delay_s > 0 (how long the stream pauses)")
        if self.refuse and (
            self.cut_after_bytes is not None or self.stall_after_bytes is not None or self.delay_s > 0
        ):
            raise ValueError(
                "refuse resets the connection at once: it cannot be combined with a cut or stall"
            )
        if self.grpc_code is not None and self.grpc_code not in GRPC_CODES:
            raise ValueError(f"grpc_code must be a gRPC status name other than OK: {sorted(GRPC_CODES)}")
        effects = (
            self.status,
            self.cut_after_bytes,
            self.expire or None,
            self.refuse or None,
            self.grpc_code,
            self.drop or None,
        )
        if all(e is None for e in effects) and self.delay_s <= 0:
            raise ValueError(
                "a fault rule needs an effect: status, cut_after_bytes, expire, refuse, grpc_code, drop"
                " or delay_s"
            )
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, req: RequestInfo) -> bool:
        if not fnmatch.fnmatchcase(req.route, self.route):
            return False
        if self.method != "*" and self.method.upper() != req.method.upper():
            return False
        if self.path != "*" and not fnmatch.fnmatchcase(req.path, self.path):
            return False
        return self.part_number is None or self.part_number == req.part_number


@dataclass
class _Armed:
    rule: FaultRule
    seen: int = 0
    fired: int = 0


# The fields that say what goes wrong, and whose default means "not this effect". A server names the ones
# it honours (``FaultPlan(honours=...)``): a rule using another one would fire and do nothing.
EFFECT_FIELDS: dict[str, Any] = {
    "status": None,
    "cut_after_bytes": None,
    "expire": False,
    "direction": "server_to_client",
    "cut_with": "fin",
    "stall_after_bytes": None,
    "refuse": False,
    "grpc_code": None,
    "drop": False,
}
HTTP_EFFECTS = frozenset({"status", "cut_after_bytes", "expire"})


class FaultPlan:
    """Thread-safe list of rules; each request consumes at most one firing rule (the first that fires).

    ``honours`` names the effect fields (``EFFECT_FIELDS``) the server applies; a rule that sets any other
    is refused, so a test never passes because its fault silently did nothing. None accepts every rule.
    """

    def __init__(self, rules: Iterable[FaultRule] = (), *, honours: frozenset[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self._honours = honours
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> FaultRule:
        if self._honours is not None:
            unused = sorted(
                name
                for name, default in EFFECT_FIELDS.items()
                if name not in self._honours and getattr(rule, name) != default
            )
            if unused:
                raise ValueError(f"this server does not apply the fault rule fields {unused}")
        if not rule.id:
            rule = replace(rule, id=f"fault-{next(_ids)}")
        with self._lock:
            self._armed.append(_Armed(rule))
        return rule

    def remove(self, rule_id: str) -> bool:
        with self._lock:
            before = len(self._armed)
            self._armed = [a for a in self._armed if a.rule.id != rule_id]
            return len(self._armed) != before

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def check(self, req: RequestInfo) -> FaultRule | None:
        """Count this request against every matching rule and return the first rule that fires."""
        hit: FaultRule | None = None
        with self._lock:
            for armed in self._armed:
                if not armed.rule.matches(req):
                    continue
                armed.seen += 1
                rule = armed.rule
                in_window = armed.seen >= rule.nth and (rule.times is None or armed.fired < rule.times)
                if hit is None and in_window:
                    armed.fired += 1
                    hit = rule
        return hit

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**a.rule.to_dict(), "seen": a.seen, "fired": a.fired} for a in self._armed]
