"""Server-side knobs of the Zerobus emulator, settable at start and through the control plane."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

MiB = 1024 * 1024

# The SDK's fixed per-call payload limit, "matching the server-side limit" (reference 5.3).
MAX_PAYLOAD_BYTES = 10_420_224


@dataclass(frozen=True)
class ZerobusSettings:
    # Bearer tokens accepted for any table (what a custom headers provider sends).
    tokens: frozenset[str] = frozenset({"zerobus-emulator"})
    # OAuth service principals: client id -> secret, for POST /oidc/v1/token (client credentials).
    oauth_clients: Mapping[str, str] = field(default_factory=lambda: {"emulator-client": "emulator-secret"})
    # Lifetime of minted OAuth tokens; the SDK refreshes before expiry.
    token_ttl_s: int = 3600
    # The SDK's OAuth path always sends x-databricks-zerobus-table-name; a headers provider only when it
    # returns it. True (the harder reading, unverified): a stream without it, or naming another table than
    # create_stream, is refused with INVALID_ARGUMENT.
    require_table_header: bool = True
    # A commit to the Delta table holds up to this many records / bytes, or whatever arrived within
    # commit_interval_s of the oldest waiting record; acks follow the commit that holds the records.
    commit_max_records: int = 50_000
    commit_max_bytes: int = 16 * MiB
    commit_interval_s: float = 0.05
    # Sum of record bytes in one request; larger is refused with INVALID_ARGUMENT (non-retryable).
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    # gRPC receive limit: above the SDK's payload limit plus framing, or grpcio's 4 MiB default makes the
    # SDK reconnect forever on RESOURCE_EXHAUSTED.
    max_receive_message_bytes: int = 16 * MiB
    # Threads serving concurrent streams (each open stream holds one).
    max_streams: int = 64

    def __post_init__(self) -> None:
        if self.commit_max_records < 1 or self.commit_max_bytes < 1:
            raise ValueError("commit limits must be >= 1")
        if self.commit_interval_s < 0:
            raise ValueError("commit_interval_s must be >= 0")
        if self.max_receive_message_bytes <= self.max_payload_bytes:
            raise ValueError("max_receive_message_bytes must exceed max_payload_bytes (request framing)")
        if self.token_ttl_s < 1 or self.max_streams < 1:
            raise ValueError("token_ttl_s and max_streams must be >= 1")

    def updated(self, changes: Mapping[str, Any]) -> ZerobusSettings:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        coerced = dict(changes)
        if "tokens" in coerced:
            coerced["tokens"] = frozenset(coerced["tokens"])
        if "oauth_clients" in coerced:
            coerced["oauth_clients"] = dict(coerced["oauth_clients"])
        return replace(self, **coerced)

    def public(self) -> dict[str, Any]:
        """Settings without secrets, for the inspect endpoint."""
        data = asdict(self)
        data["tokens"] = len(self.tokens)
        data["oauth_clients"] = sorted(self.oauth_clients)
        return data
