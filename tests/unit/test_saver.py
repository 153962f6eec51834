"""CoalescingSaver: at most one write per interval, the final state always written (no timing thresholds:
an interval of an hour makes "not written yet" certain)."""

from __future__ import annotations

import threading

import pytest

from airflow_databricks_transfer.engine.saver import CoalescingSaver


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, frozenset[int]]] = []
        self.first = threading.Event()

    def __call__(self, state: int, changed: frozenset[int]) -> None:
        self.writes.append((state, changed))
        self.first.set()


def test_writes_are_capped_and_flush_writes_the_final_state() -> None:
    rec = Recorder()
    saver: CoalescingSaver[int] = CoalescingSaver(rec, min_interval_s=3600)
    saver.offer(0, 0)
    assert rec.first.wait(10)  # the first state goes out at once
    for i in range(1, 200):
        saver.offer(i, i)
    saver.flush()  # the interval is not over, yet flush writes now
    assert rec.writes == [(0, frozenset({0})), (199, frozenset(range(1, 200)))]
    saver.offer(200, 200)
    saver.close()  # and so does close
    assert rec.writes[-1] == (200, frozenset({200}))
    assert saver.writes == 3


def test_close_writes_what_is_pending_without_a_flush() -> None:
    rec = Recorder()
    saver: CoalescingSaver[int] = CoalescingSaver(rec, min_interval_s=3600)
    saver.offer(1, 1)
    assert rec.first.wait(10)
    saver.offer(2, 2)
    saver.offer(3, 3)
    saver.close()
    assert rec.writes == [(1, frozenset({1})), (3, frozenset({2, 3}))]


def test_zero_interval_writes_every_state_it_sees() -> None:
    rec = Recorder()
    saver: CoalescingSaver[int] = CoalescingSaver(rec, min_interval_s=0)
    for i in range(5):
        saver.flush(i, i)
    saver.close()
    assert [s for s, _ in rec.writes] == [0, 1, 2, 3, 4]


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        CoalescingSaver(Recorder(), min_interval_s=-1)


def test_drop_forgets_the_pending_state() -> None:
    rec = Recorder()
    saver: CoalescingSaver[int] = CoalescingSaver(rec, min_interval_s=3600)
    saver.offer(1, 1)
    assert rec.first.wait(10)
    saver.offer(2, 2)
    saver.drop()
    saver.close()
    assert rec.writes == [(1, frozenset({1}))]
