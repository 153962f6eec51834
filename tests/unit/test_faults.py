"""FaultRule / FaultPlan: which requests a rule matches, when it fires, and which rules are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_databricks_transfer.testing.faults import HTTP_EFFECTS, FaultPlan, FaultRule, RequestInfo

PART_PUT = RequestInfo("presigned.part", "PUT", "/Volumes/main/default/landing/big.bin", 3)


def fired(plan: FaultPlan, requests: list[RequestInfo]) -> list[str | None]:
    """The id of the rule that fired for each request in turn (None when nothing fired)."""
    out: list[str | None] = []
    for req in requests:
        rule = plan.check(req)
        out.append(rule.id if rule else None)
    return out


# ---------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("rule_kwargs", "expected"),
    [
        ({}, True),
        ({"route": "presigned.part"}, True),
        ({"route": "presigned.*"}, True),
        ({"route": "presigned.download"}, False),
        ({"route": "files.*"}, False),
        ({"method": "PUT"}, True),
        ({"method": "put"}, True),
        ({"method": "GET"}, False),
        ({"path": "/Volumes/main/default/landing/*"}, True),
        ({"path": "*.bin"}, True),
        ({"path": "*.csv"}, False),
        ({"path": "/Volumes/main/default/landing/big.bin"}, True),
        ({"part_number": 3}, True),
        ({"part_number": 2}, False),
        ({"route": "presigned.part", "method": "PUT", "path": "*big*", "part_number": 3}, True),
        ({"route": "presigned.part", "method": "PUT", "path": "*big*", "part_number": 4}, False),
    ],
)
def test_rule_matching(rule_kwargs: dict[str, Any], expected: bool) -> None:
    rule = FaultRule(status=500, **rule_kwargs)
    assert rule.matches(PART_PUT) is expected


def test_route_glob_is_case_sensitive_but_method_is_not() -> None:
    assert not FaultRule(route="PRESIGNED.*", status=500).matches(PART_PUT)
    assert FaultRule(method="pUt", status=500).matches(PART_PUT)


def test_part_number_rule_does_not_match_requests_without_a_part() -> None:
    rule = FaultRule(part_number=1, status=500)
    assert not rule.matches(RequestInfo("files.get", "GET", "/Volumes/a/b/c/f"))
    assert FaultRule(status=500).matches(RequestInfo("files.get", "GET", "/Volumes/a/b/c/f"))


def test_path_rule_does_not_match_requests_without_a_path() -> None:
    rule = FaultRule(path="/Volumes/*", status=503)
    assert not rule.matches(RequestInfo("well_known", "GET"))


# ---------------------------------------------------------------- windows


def test_default_rule_fires_once_on_the_first_match() -> None:
    plan = FaultPlan()
    rule = plan.add(FaultRule(route="files.get", status=503))
    get = RequestInfo("files.get", "GET", "/Volumes/a/b/c/f")
    assert fired(plan, [get, get, get]) == [rule.id, None, None]


def test_nth_and_times_window() -> None:
    plan = FaultPlan()
    rule = plan.add(FaultRule(route="files.get", nth=2, times=2, status=503))
    get = RequestInfo("files.get", "GET", "/Volumes/a/b/c/f")
    assert fired(plan, [get] * 5) == [None, rule.id, rule.id, None, None]


def test_times_none_fires_forever_from_nth() -> None:
    plan = FaultPlan()
    rule = plan.add(FaultRule(route="files.get", nth=3, times=None, status=500))
    get = RequestInfo("files.get", "GET", "/Volumes/a/b/c/f")
    assert fired(plan, [get] * 10) == [None, None] + [rule.id] * 8


def test_non_matching_requests_do_not_advance_the_window() -> None:
    plan = FaultPlan()
    rule = plan.add(FaultRule(route="presigned.part", part_number=2, nth=2, status=500))
    part = {n: RequestInfo("presigned.part", "PUT", "/Volumes/a/b/c/f", n) for n in (1, 2, 3)}
    sequence = [part[1], part[2], part[3], part[1], part[2], part[2]]
    assert fired(plan, sequence) == [None, None, None, None, rule.id, None]


def test_first_firing_rule_wins_but_every_matching_rule_counts_the_request() -> None:
    plan = FaultPlan()
    first = plan.add(FaultRule(route="files.*", status=503))
    second = plan.add(FaultRule(route="files.get", nth=1, times=2, status=500))
    get = RequestInfo("files.get", "GET", "/Volumes/a/b/c/f")
    # request 1: both match, the first fires; request 2: the second (already seen once) fires;
    # request 3: the second is still in its window; request 4: nothing left.
    assert fired(plan, [get] * 4) == [first.id, second.id, second.id, None]
    counts = {s["id"]: (s["seen"], s["fired"]) for s in plan.snapshot()}
    assert counts == {first.id: (4, 1), second.id: (4, 2)}


def test_add_assigns_unique_ids_and_keeps_explicit_ones() -> None:
    plan = FaultPlan()
    a = plan.add(FaultRule(status=500))
    b = plan.add(FaultRule(status=500))
    c = plan.add(FaultRule(status=500, id="mine"))
    assert a.id and b.id and a.id != b.id
    assert c.id == "mine"
    assert [s["id"] for s in plan.snapshot()] == [a.id, b.id, "mine"]


def test_remove_and_clear() -> None:
    plan = FaultPlan([FaultRule(status=500, times=None), FaultRule(status=503, times=None)])
    ids = [s["id"] for s in plan.snapshot()]
    assert plan.remove(ids[0]) is True
    assert plan.remove(ids[0]) is False
    req = RequestInfo("files.get", "GET")
    rule = plan.check(req)
    assert rule is not None and rule.status == 503
    plan.clear()
    assert plan.check(req) is None
    assert plan.snapshot() == []


# ---------------------------------------------------------------- construction


def test_from_dict_round_trips_to_dict() -> None:
    rule = FaultRule(
        route="presigned.part",
        method="PUT",
        path="/Volumes/*",
        part_number=2,
        nth=3,
        times=None,
        status=429,
        retry_after_s=2.0,
        phase="after",
        id="r1",
    )
    assert FaultRule.from_dict(rule.to_dict()) == rule


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown fault rule keys"):
        FaultRule.from_dict({"route": "files.get", "status": 500, "statsu": 503})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no effect at all
        {"route": "files.get"},  # still no effect
        {"status": 500, "nth": 0},
        {"status": 500, "times": 0},
        {"status": 500, "phase": "during"},
        {"cut_after_bytes": -1},
        {"status": 99},
        {"status": 600},
        {"delay_s": 0.0},
    ],
)
def test_invalid_rules_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultRule(**kwargs)


def test_invalid_rule_from_dict_is_rejected() -> None:
    with pytest.raises(ValueError):
        FaultRule.from_dict({"route": "files.get", "nth": 0, "status": 500})


@pytest.mark.parametrize(
    "kwargs",
    [{"status": 503}, {"cut_after_bytes": 0}, {"expire": True}, {"delay_s": 0.5}],
)
def test_each_effect_alone_is_enough(kwargs: dict[str, Any]) -> None:
    FaultRule(**kwargs)


@pytest.mark.parametrize(
    "effect",
    [
        {"refuse": True},
        {"grpc_code": "UNAVAILABLE"},
        {"drop": True},
        {"cut_after_bytes": 5, "cut_with": "rst"},
    ],
)
def test_a_server_refuses_rules_it_would_not_apply(effect: dict[str, object]) -> None:
    """The Files emulator works on HTTP requests: a proxy- or gRPC-only effect would fire and do nothing."""
    plan = FaultPlan(honours=HTTP_EFFECTS)
    with pytest.raises(ValueError, match="does not apply the fault rule fields"):
        plan.add(FaultRule(**effect))  # type: ignore[arg-type]
    assert plan.add(FaultRule(status=503)).id  # what it applies is still taken


def test_the_zerobus_emulator_refuses_a_proxy_only_rule(tmp_path: Path) -> None:
    from airflow_databricks_transfer.testing.zerobus import ZerobusEmulator

    emu = ZerobusEmulator(tmp_path)  # not started: the rule is refused when it is added
    with pytest.raises(ValueError, match=r"does not apply the fault rule fields \['refuse'\]"):
        emu.add_fault(route="zerobus.ingest", refuse=True)
    assert emu.add_fault(route="zerobus.ingest", grpc_code="UNAVAILABLE").id
