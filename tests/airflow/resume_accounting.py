"""What each try of a killed-and-retried upload sent, from the Files emulator's log of part PUTs.

The log is split at try 2's start: a try-1 PUT began before the kill, a try-2 PUT after try 2 started,
so the split needs no timing assumption. Parts that finished after try 1's last checkpoint write had
gone out (the saver writes off the data path, at most once a second) are counted, not guessed: a fixed
bound on them was a bound on the API server's latency, and failed under CI load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.testing.files_api import FilesApiEmulator
from airflow_databricks_transfer.testing.files_api.requestlog import LoggedRequest


@dataclass(frozen=True)
class ResumeAccount:
    in_flight: list[int]  # parts try 1 was sending at the kill: sent again by try 2
    unsaved: list[int]  # parts try 1 finished after its last checkpoint write: sent again too
    resent_bytes: int


def _ok(request: LoggedRequest) -> bool:
    return 200 <= request.status < 300 and not request.dropped


def check_only_unfinished_parts_resent(
    emu: FilesApiEmulator,
    dest: str,
    tries: list[dict[str, Any]],
    at_kill: UploadCheckpoint,
    result: dict[str, Any],
    *,
    parallelism: int,
) -> ResumeAccount:
    """Assert that try 2 sent exactly the parts missing from the checkpoint it resumed, that every
    checkpointed part went once, and that what went twice is only what the kill caught."""
    size, part, count = at_kill.source.size, at_kill.part_size, at_kill.part_count

    def part_bytes(n: int) -> int:
        return part if n != count else size - (count - 1) * part

    try2_start = datetime.fromisoformat(tries[1]["start_date"]).timestamp()
    puts: dict[str, dict[int, list[LoggedRequest]]] = {"try1": {}, "try2": {}}
    for r in emu.requests("presigned.part"):
        if r.path == dest and r.part_number is not None:
            which = "try1" if r.time - r.duration_s < try2_start else "try2"
            puts[which].setdefault(r.part_number, []).append(r)
    try1, try2 = puts["try1"], puts["try2"]
    all_parts = set(range(1, count + 1))
    assert set(try1) | set(try2) == all_parts
    accepted1 = {n for n, rs in try1.items() if any(_ok(r) for r in rs)}
    assert {n for n, rs in try2.items() if any(_ok(r) for r in rs)} == set(try2)  # try 2 finished its parts
    # try 2 resumed a checkpoint holding at least the parts seen at the kill, and sent exactly the others
    resumed = all_parts - set(try2)
    assert len(resumed) == result["parts_resumed"] and set(at_kill.parts) <= resumed <= accepted1
    for n in resumed:
        assert [r.bytes_in for r in try1[n]] == [part_bytes(n)], f"part {n} was sent again"
    in_flight = sorted(set(try1) & set(try2) - accepted1)
    unsaved = sorted(set(try2) & accepted1)
    assert len(in_flight) <= parallelism, in_flight
    resent = sum(emu.part_bytes(dest).values()) - size
    try1_again = sum(r.bytes_in for n in try2 for r in try1.get(n, []))
    assert resent == try1_again <= (len(in_flight) + len(unsaved)) * part, (resent, in_flight, unsaved)
    return ResumeAccount(in_flight, unsaved, resent)
