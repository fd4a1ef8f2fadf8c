"""The scheduling policy: round-robin, idle priority, bounded priority bursts."""

from __future__ import annotations

import pytest

from denali.scheduler import Scheduler


def test_round_robin_order() -> None:
    s = Scheduler()
    for i in (1, 2, 3):
        s.enqueue(i)
    order = []
    for _ in range(6):
        v = s.pick()
        assert v is not None
        order.append(v)
        s.enqueue(v)
    assert order == [1, 2, 3, 1, 2, 3]


def test_idled_vm_runs_first() -> None:
    s = Scheduler()
    s.enqueue(1)
    s.enqueue(2)
    s.enqueue(3, idled=True)
    assert s.pick() == 3
    assert s.pick() == 1


def test_priority_burst_does_not_starve_normal_queue() -> None:
    s = Scheduler(burst=2)
    s.enqueue(100)
    for i in range(5):
        s.enqueue(i, idled=True)
    assert [s.pick() for _ in range(3)] == [0, 1, 100]
    assert [s.pick() for _ in range(3)] == [2, 3, 4]
    assert s.pick() is None


def test_enqueue_twice_keeps_place_and_remove() -> None:
    s = Scheduler()
    s.enqueue(1)
    s.enqueue(2)
    s.enqueue(1, idled=True)
    assert len(s) == 2
    assert s.remove(1)
    assert not s.remove(1)
    assert 1 not in s
    assert s.pick() == 2
    assert s.pick() is None


def test_bad_burst() -> None:
    with pytest.raises(ValueError):
        Scheduler(burst=0)
